"""YAML syntax errors in models.yaml: plain words, at the line of the mistake, PyYAML's own
message kept as the detail."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_serve.config import ConfigError, load_config
from mlx_serve.config.loader import parse_config_text


def syntax_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    error = info.value
    assert error.message.startswith("invalid YAML: "), error.message
    assert error.detail is not None and error.detail.startswith("PyYAML: "), error.detail
    return error


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(
            "server:\n  port: 8095\nmodels:\n  a:\n\tpath: x\n",
            5,
            "a tab character is not allowed for indentation; indent with spaces",
            id="tab-indent",
        ),
        pytest.param(
            "models:\r\n  a:\r\n\t  path: x\r\n",
            3,
            "a tab character is not allowed for indentation",
            id="tab-indent-crlf",
        ),
        pytest.param(
            "models:\n  a:\n    path:\tx/y\n",
            3,
            "a tab character after 'path:' is not allowed; use a space",
            id="tab-after-colon",
        ),
    ],
)
def test_tabs(text: str, line: int, words: str) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert words in error.message


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        # PyYAML stops on the line after: "mapping values are not allowed here".
        pytest.param(
            "server:\n  port: 8095\nmodels:\n  a:\n    path x/y\n    type: text\n",
            5,
            "path",
            id="middle-key",
        ),
        # ...or at the end of the file: "could not find expected ':'".
        pytest.param("models:\n  a:\n    type: text\n    path x/y\n", 4, "path", id="last-key"),
        pytest.param("models\n  a:\n    path: x\n", 1, "models", id="top-level-key"),
        pytest.param("models:\n  a\n    path: x\n", 2, "a", id="key-of-a-mapping"),
        pytest.param(
            "models:\n  a:\n    path x/y\n    # a comment\n    type: text\n",
            3,
            "path",
            id="comment-after",
        ),
    ],
)
def test_missing_colon(text: str, line: int, key: str) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert f"a ':' is missing after the key '{key}'" in error.message


def test_missing_space_after_colon() -> None:
    error = syntax_error("models:\n  a:\n    path:x/y\n    type: text\n")
    assert error.line == 3
    assert "a space is missing after 'path:'" in error.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param('models:\n  a:\n    path: "x/y\n    type: text\n', 3, id="double"),
        pytest.param("models:\n  a:\n    path: 'x/y\n    type: text\n", 3, id="single"),
        # Another quote further down closes it, and the parser fails there instead.
        pytest.param('models:\n  a:\n    path: "x/y\n    type: "text"\n', 3, id="closed-too-late"),
    ],
)
def test_unclosed_quote(text: str, line: int) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert "unclosed quote" in error.message


def test_backslash_in_double_quotes() -> None:
    error = syntax_error('models:\n  a:\n    path: "C:\\Users\\me"\n')
    assert error.line == 3
    assert "use single quotes" in error.message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(
            "models:\n  a:\n    path: x\n   type: text\n",
            4,
            "'type' is indented 3 spaces but 'path' (line 3) is indented 4",
            id="less",
        ),
        pytest.param(
            "server:\n  port: 1\n bad: [\n",
            3,
            "'bad' is indented 1 space but 'port' (line 2) is indented 2",
            id="one-space",
        ),
        pytest.param(
            "models:\n  a:\n    path: x\n      type: text\n",
            4,
            "'type' is indented under 'path' (line 3), which has a value already",
            id="more",
        ),
        pytest.param(
            "models:\n  a:\n    aliases:\n    - x\n   - y\n",
            5,
            "this list item is indented 3 spaces but the line above it (line 4) is indented 4",
            id="list-item",
        ),
        pytest.param(
            "models:\n  a:\n    path: x\n    - y\n",
            4,
            "a list item ('- ') among the keys of a mapping",
            id="list-among-keys",
        ),
    ],
)
def test_bad_indentation(text: str, line: int, words: str) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert words in error.message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(
            "models:\n  a:\n    path: x: y\n",
            3,
            "the value of 'path' contains ': '",
            id="colon-in-value",
        ),
        pytest.param(
            "models:\n  a: {path: x, type: text\n",
            2,
            "the '{' opened on this line is never closed: a '}' is missing",
            id="unclosed-brace",
        ),
        pytest.param(
            "models:\n  a:\n    aliases: [x, y\n    path: z\n",
            3,
            "the '[' opened on this line is never closed",
            id="unclosed-bracket",
        ),
        pytest.param(
            'models:\n  a:\n    path: "x" y\n', 3, "text after the closing quote", id="after-quote"
        ),
        pytest.param(
            "models:\n  a:\n    path: @x\n", 3, "a value cannot start with '@'", id="at-sign"
        ),
        pytest.param("models:\n  a: *nope\n", 2, "'*nope' refers to an anchor", id="alias"),
        pytest.param(
            "models: {}\n---\nserver: {}\n", 2, "a second YAML document", id="two-documents"
        ),
    ],
)
def test_other_mistakes(text: str, line: int, words: str) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert words in error.message


def test_rendered_with_the_file_and_pyyaml_kept_as_detail(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("server:\n  port: 8095\nmodels:\n  a:\n    path x/y\n    type: text\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:5: invalid YAML: a ':' is missing after the key 'path'"
    # Where PyYAML stopped, in its words: one line further down.
    assert info.value.detail == ("PyYAML: mapping values are not allowed here (line 6, column 9)")
    assert info.value.issues[0].detail == info.value.detail


def test_an_unrecognised_mistake_keeps_pyyaml_words() -> None:
    error = syntax_error("models:\n  a: !!python/name:os.system x\n")
    assert error.line == 2
    assert "could not determine a constructor" in error.message
