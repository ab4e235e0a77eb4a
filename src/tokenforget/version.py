"""The package version (one place: pyproject.toml's version is the same string) and the fingerprint
of the code itself, which the version string cannot give: every commit so far is 0.1.0."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def source_sha256(package: Path | None = None) -> str:
    """SHA-256 over a package's Python source (this one's by default): every .py file's path,
    relative to the package, and bytes, in path order. Two runs with the same settings and different
    fingerprints were made by different code (a fix between them), so `compare` does not read them
    as seeds of one point."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
