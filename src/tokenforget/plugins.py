"""Extensions from outside the package: modules that register methods, identifiers or metrics.

A plugin is an importable module whose import registers what it adds (`losses.register`,
`identify.identifiers.register`). tokenforget imports, once, every module named by the entry-point
group `tokenforget.plugins` of installed packages and every module in the comma-separated
environment variable TOKENFORGET_PLUGINS (handy for a module of your own on PYTHONPATH). The CLI
loads them before it builds its help; a config naming an unknown method or identifier loads them
before it says so. Library users can simply import their module.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from tokenforget.errors import ConfigError

ENTRY_POINT_GROUP = "tokenforget.plugins"
ENV_VAR = "TOKENFORGET_PLUGINS"

_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """The modules to import: entry points first, then TOKENFORGET_PLUGINS, in order, without repeats."""
    names = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [name.strip() for name in os.environ.get(ENV_VAR, "").split(",") if name.strip()]
    return list(dict.fromkeys(names))


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; returns the ones imported by this call."""
    new = []
    for name in plugin_modules():
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"plugin module {name!r} (from {ENV_VAR} or the {ENTRY_POINT_GROUP!r} entry points) "
                f"cannot be imported: {exc}. Fix: put it on PYTHONPATH or remove it from {ENV_VAR}"
            ) from exc
        _loaded.add(name)
        new.append(name)
    return new
