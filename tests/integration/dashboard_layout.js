// What the dashboard's layout is at the current viewport width, for test_dashboard.py:
// {problems: {page, beyond, panels, overlaps, spills, buttons}, measures: {...}}.
// One expression (evaluated over CDP); it scrolls the page to find the buttons, then back.
(() => {
  const vw = innerWidth;
  const box = (el) => el.getBoundingClientRect();
  const shown = (el) => el.checkVisibility() && box(el).width > 0 && box(el).height > 0;
  const name = (el) => {
    const model = el.closest('[data-model]');
    const classes = typeof el.className === 'string' ? el.className.trim().split(/\s+/) : [];
    const cls = classes.filter(Boolean).map((c) => `.${c}`).join('');
    const id = el.id ? `#${el.id}` : '';
    return `${el.tagName.toLowerCase()}${id}${cls}${model ? `[${model.dataset.model}]` : ''}`;
  };
  const hit = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5
    && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  const span = (r) => `${Math.round(r.left)}..${Math.round(r.right)}`;
  const problems = { page: [], beyond: [], panels: [], overlaps: [], spills: [], buttons: [] };

  // The page scrolls sideways; elements leave the viewport.
  const root = document.documentElement;
  if (root.scrollWidth > vw) problems.page.push(`scrollWidth ${root.scrollWidth} > ${vw}`);
  const all = [...document.body.querySelectorAll('*')].filter(shown);
  for (const el of all) {
    const r = box(el);
    if (r.right > vw + 0.5 || r.left < -0.5) problems.beyond.push(`${name(el)} ${span(r)}`);
  }

  // The header and the panels do not intersect.
  const panels = [...document.querySelectorAll('header.top, main > .panel')].filter(shown);
  for (let i = 0; i < panels.length; i++) {
    for (let j = i + 1; j < panels.length; j++) {
      if (hit(box(panels[i]), box(panels[j]))) {
        problems.panels.push(`${name(panels[i])} x ${name(panels[j])}`);
      }
    }
  }

  // Parts laid out side by side do not intersect.
  const rows = ['.top', '.hstats', '.panel-head', '.legend', '.controls', '.budget', '.spares',
    '.spare-list', 'tr.model', '.mname', '.actions', '.perf-row', '.bar-line', '.ev'];
  for (const row of document.querySelectorAll(rows.join(','))) {
    if (!shown(row)) continue;
    const parts = [...row.children].filter(shown);
    for (let i = 0; i < parts.length; i++) {
      for (let j = i + 1; j < parts.length; j++) {
        if (hit(box(parts[i]), box(parts[j]))) {
          problems.overlaps.push(`${name(parts[i])} x ${name(parts[j])} in ${name(row)}`);
        }
      }
    }
  }

  // Content wider than its box, not cut with an ellipsis: it scrolls or draws over others.
  for (const el of all) {
    const st = getComputedStyle(el);
    if (st.display === 'inline' || el.classList.contains('sr-only')) continue;
    if (el.scrollWidth <= el.clientWidth + 1 || st.textOverflow === 'ellipsis') continue;
    problems.spills.push(`${name(el)} ${el.scrollWidth} > ${el.clientWidth} (${st.overflowX})`);
  }

  // Every Load/Unload button wholly visible: inside the viewport and the table, uncovered.
  const wrap = box(document.querySelector('.table-wrap'));
  for (const b of document.querySelectorAll('tr.model button[data-action]')) {
    // Scroll the page (only: a table scrolled sideways to reach it does not count).
    scrollTo(0, box(b).top + scrollY - innerHeight / 2);
    const r = box(b);
    const inside = r.width > 0 && r.left >= Math.max(0, wrap.left) - 0.5
      && r.right <= Math.min(vw, wrap.right) + 0.5;
    // The middle of each edge, just inside (its rounded corners are not the button's).
    const x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
    const edges = [[r.left + 2, y], [r.right - 2, y], [x, r.top + 2], [x, r.bottom - 2]];
    const covered = edges.some(([x, y]) => {
      const at = document.elementFromPoint(x, y);
      return !at || !b.contains(at);
    });
    if (!inside || covered) problems.buttons.push(`${name(b)} ${span(r)}${covered ? ' covered' : ''}`);
  }
  scrollTo(0, 0);

  const width = (sel) => Math.round(box(document.querySelector(sel)).width);
  const table = document.querySelector('.table-wrap');
  const measures = {
    page: root.scrollWidth,
    table: table.scrollWidth,
    table_box: table.clientWidth,
    models: width('.models-panel'),
    chart: width('.chart-panel'),
    perf: width('.perf-panel'),
    columns: [...document.querySelectorAll('#models thead th')]
      .filter((th) => th.checkVisibility()).map((th) => th.className.match(/c-(\w+)/)[1]),
    cards: getComputedStyle(document.querySelector('tr.model')).display === 'flex',
  };
  return { problems, measures };
})()
