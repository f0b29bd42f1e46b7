"""The one exception type for a bad models.yaml.

The config is edited by hand while the server runs (it is hot-reloaded), so an error must
point at the exact file, line and key, like a compiler does, and list every problem at
once so the user does not fix them one reload at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file.

    ``line`` is 1-based; ``key`` is the dotted path of the offending key as the user wrote
    it (``models.foo.idle_timeout``, or ``models[0].hf_path`` in a legacy file). ``detail``
    is what a tool said about it, in its own terms (PyYAML's message for a syntax error,
    which the message puts in plain words): not rendered, kept for a verbose view.
    """

    message: str
    line: int | None = None
    key: str | None = None
    detail: str | None = None

    def render(self, path: Path | None) -> str:
        """Format as ``file:line: key: message``, dropping the parts that are unknown."""
        where = ""
        if path is not None:
            where = f"{path}:{self.line}: " if self.line is not None else f"{path}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(Exception):
    """A config file could not be read, parsed or validated.

    ``path``/``line``/``key``/``message``/``detail`` describe the first problem (the one
    nearest the top of the file); ``issues`` holds all of them and ``str()`` renders one per
    line.
    """

    def __init__(
        self,
        message: str,
        path: Path | None = None,
        line: int | None = None,
        key: str | None = None,
        *,
        issues: list[ConfigIssue] | None = None,
        detail: str | None = None,
    ) -> None:
        self.path = path
        self.issues: list[ConfigIssue] = issues or [ConfigIssue(message, line, key, detail)]
        first = self.issues[0]
        self.message = first.message
        self.line = first.line
        self.key = first.key
        self.detail = first.detail
        super().__init__(self._render())

    @classmethod
    def from_issues(cls, issues: list[ConfigIssue], path: Path | None) -> ConfigError:
        """Build one error from several issues, first by line so ``.line`` is the topmost."""
        if not issues:
            raise ValueError("from_issues needs at least one issue")
        ordered = sorted(issues, key=lambda i: i.line if i.line is not None else 0)
        first = ordered[0]
        return cls(first.message, path, first.line, first.key, issues=ordered)

    def _render(self) -> str:
        return "\n".join(issue.render(self.path) for issue in self.issues)

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions are pickled by re-calling __init__ with self.args, which would lose the
        # keyword-only issues; needed if the error crosses a process boundary.
        return (_rebuild, (self.path, self.issues))


def _rebuild(path: Path | None, issues: list[ConfigIssue]) -> ConfigError:
    return ConfigError.from_issues(issues, path)
