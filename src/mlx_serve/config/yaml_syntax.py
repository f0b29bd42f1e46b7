"""YAML syntax errors in plain words, at the line where the mistake is.

PyYAML reports where its parser gave up, in its own terms: a ``:`` missing after ``path``
on line 5 reads as "mapping values are not allowed here" on line 6, an unclosed quote as
"found unexpected end of stream" on the last line. :func:`explain` looks at the text around
that point and says what is most likely wrong, and where, for the mistakes people make when
editing a config by hand: tabs, a missing ``:`` or space after it, indentation that does not
line up, quotes and brackets left open, a ``:`` inside an unquoted value. Anything else keeps
PyYAML's own words. PyYAML's message is always kept as the detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

__all__ = ["SyntaxProblem", "explain"]

#: The line breaks PyYAML counts lines by (its marks are 0-based line numbers).
_BREAKS = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")
#: ``key:`` followed by something other than a space: ``path:x/y``.
_NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:-\s+)?([^\s:#'\"][^:#]*?):([^\s:/\\])")
_QUOTES = ("'", '"')


@dataclass(frozen=True, slots=True)
class SyntaxProblem:
    """What is wrong (plain words), on which 1-based line, and PyYAML's own account."""

    message: str
    line: int | None
    detail: str


def explain(exc: yaml.MarkedYAMLError, text: str) -> SyntaxProblem:
    """The mistake behind ``exc``, raised while parsing ``text``."""
    detail = _pyyaml_words(exc)
    lines = _BREAKS.split(text)
    found = _Explainer(exc, lines).explain()
    if found is None:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "syntax error"
        message = problem + (f" ({exc.context})" if exc.context else "")
        return SyntaxProblem(message, mark.line + 1 if mark is not None else None, detail)
    line, message = found
    return SyntaxProblem(message, line + 1, detail)


def _pyyaml_words(exc: yaml.MarkedYAMLError) -> str:
    parts = [f"{exc.context}: " if exc.context else "", exc.problem or "syntax error"]
    mark = exc.problem_mark or exc.context_mark
    if mark is not None:
        parts.append(f" (line {mark.line + 1}, column {mark.column + 1})")
    return "PyYAML: " + "".join(parts)


class _Explainer:
    def __init__(self, exc: yaml.MarkedYAMLError, lines: list[str]) -> None:
        self.problem = exc.problem or ""
        self.context = exc.context or ""
        self.at = exc.problem_mark
        self.opened = exc.context_mark
        self.lines = lines

    def explain(self) -> tuple[int, str] | None:
        """(0-based line, message), or None to keep PyYAML's words."""
        if self.at is None:
            return None
        for rule in (
            self._tab,
            self._quoted,
            self._simple_key,
            self._mapping_value,
            self._block_end,
            self._flow,
            self._misc,
        ):
            found = rule()
            if found is not None:
                return found
        return None

    # ---------------------------------------------------------------- the rules

    def _tab(self) -> tuple[int, str] | None:
        if "\\t" not in self.problem and "tab" not in self.problem:
            return None
        assert self.at is not None
        line = self.at.line
        tab = self.text(line).find("\t")
        before = self.text(line)[: tab if tab >= 0 else self.at.column]
        if not before.strip() or before.strip() == "-":
            return line, "a tab character is not allowed for indentation; indent with spaces"
        if before.rstrip().endswith(":"):
            key = before.strip().rstrip(":")
            return line, f"a tab character after '{key}:' is not allowed; use a space"
        return line, "a tab character is not allowed here; use spaces"

    def _quoted(self) -> tuple[int, str] | None:
        if "quoted scalar" not in self.context or self.opened is None:
            return None
        opened = self.opened.line
        quote = self.char(opened, self.opened.column)
        quote_name = "double" if quote == '"' else "single"
        assert self.at is not None
        if "end of stream" in self.problem or "document" in self.problem:
            return opened, (
                f"unclosed quote: the {quote_name} quote ({quote}) that starts this value is "
                "never closed"
            )
        if "escape" in self.problem:
            return self.at.line, (
                "a backslash in double quotes starts an escape sequence, and this one is not "
                "valid; use single quotes (for a Windows path, say), or write \\\\ for a "
                "backslash"
            )
        return None

    def _simple_key(self) -> tuple[int, str] | None:
        if "could not find expected ':'" not in self.problem or self.opened is None:
            return None
        line = self.opened.line
        return line, self._colon_trouble(line) or "this key is not followed by ':'"

    def _mapping_value(self) -> tuple[int, str] | None:
        if self.problem != "mapping values are not allowed here":
            return None
        assert self.at is not None
        line, column = self.at.line, self.at.column
        text = self.text(line)
        before = text[:column]
        if ": " in before or before.rstrip().endswith(":"):
            key = self.key(line)
            return line, (
                f"the value of '{key}' contains ': ', which YAML reads as another key; put the "
                "value in quotes"
            )
        above = self.previous(line)
        if above is None:
            return None
        trouble = self._colon_trouble(above)
        if trouble is not None:
            return above, trouble
        if self.indent(line) > self.indent(above):
            return line, (
                f"'{self.key(line)}' is indented under '{self.key(above)}' (line "
                f"{above + 1}), which has a value already: a key has either a value or keys "
                "below it; if they are at the same level, start them in the same column"
            )
        return None

    def _block_end(self) -> tuple[int, str] | None:
        if not self.problem.startswith("expected <block end>, but found"):
            return None
        assert self.at is not None
        line = self.at.line
        found = self.problem.removeprefix("expected <block end>, but found ").strip("'")
        above = self.previous(line)
        if found == "<scalar>":
            unclosed = self.unclosed_quote(line)
            if unclosed is not None:
                return unclosed
            before = self.text(line)[: self.at.column].rstrip()
            if before.endswith(_QUOTES):
                return line, ("text after the closing quote; put the whole value inside the quotes")
            return None
        if found == "-":
            return line, (
                "a list item ('- ') among the keys of a mapping; a list must be the value of a "
                "key of its own (key: on one line, the '- ' items below it)"
            )
        if found not in ("<block mapping start>", "<block sequence start>") or above is None:
            return None
        trouble = self._colon_trouble(above)
        if trouble is not None:
            return above, trouble
        here, there = self.indent(line), self.indent(above)
        if here == there:
            return None
        if found == "<block mapping start>":
            return line, (
                f"'{self.key(line)}' is indented {_spaces(here)} but '{self.key(above)}' "
                f"(line {above + 1}) is indented {there}: keys at the same level must start "
                "in the same column"
            )
        return line, (
            f"this list item is indented {_spaces(here)} but the line above it (line "
            f"{above + 1}) is indented {there}: the items of a list must start in the same "
            "column"
        )

    def _flow(self) -> tuple[int, str] | None:
        match = re.match(r"expected ',' or '([\]}])', but got (.*)", self.problem)
        if match is None or self.opened is None:
            return None
        close = match.group(1)
        opening = "[" if close == "]" else "{"
        assert self.at is not None
        if self.at.line > self.opened.line or "<stream end>" in match.group(2):
            return self.opened.line, (
                f"the '{opening}' opened on this line is never closed: a '{close}' is missing"
            )
        return self.opened.line, (
            f"in the {opening}...{close} on this line, a ',' between two items or the "
            f"closing '{close}' is missing"
        )

    def _misc(self) -> tuple[int, str] | None:
        assert self.at is not None
        line = self.at.line
        alias = re.match(r"found undefined alias '(.*)'", self.problem)
        if alias:
            name = alias.group(1)
            return line, (
                f"'*{name}' refers to an anchor '&{name}' that is not defined before it "
                "(a value starting with '*' must be quoted)"
            )
        if "found another document" in self.problem:
            return line, "a second YAML document ('---') is not allowed: keep one per file"
        start = re.match(r"found character '(.)' that cannot start any token", self.problem)
        if start:
            return line, f"a value cannot start with '{start.group(1)}'; put it in quotes"
        if self.context in ("while scanning an alias", "while scanning an anchor"):
            return line, "'*' and '&' start YAML references; put a value starting so in quotes"
        unexpected = re.match(r"expected the node content, but found '(.)'", self.problem)
        if unexpected:
            return line, f"an unexpected '{unexpected.group(1)}'; put a value with it in quotes"
        return None

    # ---------------------------------------------------------------- helpers

    def _colon_trouble(self, line: int) -> str | None:
        """What is wrong with ``line``'s ``key: value``, if it is one of the usual two."""
        text = self.text(line)
        code = _without_comment(text).strip()
        if not code or code.startswith(("- ", "#", "[", "{", *_QUOTES)) or code == "-":
            return None
        if ":" not in code:
            return f"a ':' is missing after the key '{self.key(line)}'"
        match = _NO_SPACE_AFTER_COLON.match(text)
        if match:
            key = match.group(1).strip()
            return f"a space is missing after '{key}:' (write '{key}: value')"
        return None

    def unclosed_quote(self, before: int) -> tuple[int, str] | None:
        """A line above ``before`` whose quoted value never ends on it (then the parser
        read on into the next lines as the inside of the quotes)."""
        for line in range(before - 1, -1, -1):
            code = _without_comment(self.text(line))
            _, colon, value = code.partition(": ")
            value = value.strip() if colon else code.strip().removeprefix("- ").strip()
            if value[:1] in _QUOTES and (len(value) < 2 or not value.endswith(value[0])):
                return line, (
                    f"unclosed quote: the quote ({value[0]}) that starts this value is not "
                    "closed on this line"
                )
        return None

    def text(self, line: int) -> str:
        return self.lines[line] if 0 <= line < len(self.lines) else ""

    def char(self, line: int, column: int) -> str:
        text = self.text(line)
        return text[column] if 0 <= column < len(text) else ""

    def previous(self, line: int) -> int | None:
        """The nearest line above ``line`` with something on it but a comment."""
        for above in range(line - 1, -1, -1):
            if _without_comment(self.text(above)).strip():
                return above
        return None

    def indent(self, line: int) -> int:
        text = self.text(line)
        return len(text) - len(text.lstrip(" "))

    def key(self, line: int) -> str:
        code = _without_comment(self.text(line)).strip().removeprefix("- ")
        return re.split(r":\s|:$|\s", code, maxsplit=1)[0] or code


def _without_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (outside quotes, after a space)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in _QUOTES:
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i]
    return text


def _spaces(n: int) -> str:
    return "1 space" if n == 1 else f"{n} spaces"
