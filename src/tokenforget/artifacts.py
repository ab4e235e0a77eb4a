"""Artifact caches: files that are a pure function of what made them; one stamp type, one `cached`.

A `Stamp` says what an artifact depends on (model identities, token ids, settings, its format). Its
key seals the file (safetensors metadata, a JSON field) and names it in the user cache. `cached`
returns the artifact at a path when it was made for the stamp; otherwise it builds it and writes it
atomically (a temporary file, then a rename), so a crash never leaves a file a later run would trust.
A `Codec` says how one kind of artifact is written with its stamp and read back (None when the file
is absent, torn, or made for another stamp).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tokenforget.models import cache_dir, json_digest

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Stamp:
    """What an artifact of `kind` depends on (`payload`, JSON-able)."""

    kind: str
    payload: dict[str, Any]

    @property
    def key(self) -> str:
        return json_digest(self.payload)

    def shared_path(self, suffix: str, prefix: str = "") -> Path:
        """The artifact's file in the user cache (`$TOKENFORGET_CACHE/<kind>/`), named by its key."""
        return cache_dir() / self.kind / f"{prefix}{self.key[:24]}{suffix}"


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How an artifact is written with its stamp, and read back only for the same stamp."""

    write: Callable[[Path, T, Stamp], None]
    read: Callable[[Path, Stamp], T | None]


def cached(
    path: Path,
    stamp: Stamp,
    build: Callable[[], T],
    codec: Codec[T],
    on_hit: Callable[[Path], None] | None = None,
) -> T:
    """The artifact at `path` if it was made for `stamp` (then `on_hit(path)`); else `build()`,
    stored there and returned."""
    found = codec.read(path, stamp) if path.is_file() else None
    if found is not None:
        if on_hit is not None:
            on_hit(path)
        return found
    value = build()
    store(path, value, stamp, codec)
    return value


def store(path: Path, value: T, stamp: Stamp, codec: Codec[T]) -> None:
    """Write `value` to `path` atomically, sealed with `stamp`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    codec.write(tmp, value, stamp)
    tmp.replace(path)


def json_codec(field: str) -> Codec[Any]:
    """A JSON object `{"stamp": <payload>, <field>: <value>}`: the stamp in full, for people too."""

    def write(path: Path, value: Any, stamp: Stamp) -> None:
        path.write_text(json.dumps({"stamp": stamp.payload, field: value}))

    def read(path: Path, stamp: Stamp) -> Any:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("stamp") != json.loads(json.dumps(stamp.payload)):
            return None
        return data.get(field)

    return Codec(write, read)
