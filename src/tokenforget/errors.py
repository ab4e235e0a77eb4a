"""Errors a user can act on: every one says what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class TokenforgetError(Exception):
    """Base class for errors shown to the user without a traceback (the CLI exits 2)."""


class ConfigError(TokenforgetError):
    """A config file, a `--set` override or a flag is invalid."""


class ModelError(TokenforgetError):
    """A model cannot be resolved, converted or loaded."""


@dataclass(frozen=True)
class DataIssue:
    """One problem in one input file, located precisely enough to fix it."""

    file: str
    line: int | None
    field: str | None
    problem: str
    fix: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" field '{self.field}'" if self.field else ""
        return f"{where}:{field} {self.problem}. Fix: {self.fix}"


class DataError(TokenforgetError):
    """An input data file is invalid. Holds every issue found (the CLI prints the first ones)."""

    def __init__(self, issues: list[DataIssue]):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0))
        shown = "\n".join(f"  {issue}" for issue in self.issues[:10])
        more = f"\n  ... and {len(self.issues) - 10} more" if len(self.issues) > 10 else ""
        super().__init__(f"{len(self.issues)} problem(s) in the input data:\n{shown}{more}")
