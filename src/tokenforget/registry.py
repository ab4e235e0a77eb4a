"""Registries of the pluggable components: unlearning methods, identifiers, membership metrics.

A registry maps a name to what a component provides (a `losses.Method`, an
`identify.registry.IdentifierKind`, an `evaluate.attacks.Attack`), each with its settings model.
The registries live here, below config, so that config can validate `unlearn.method` and
`identify.method` and derive their variants without importing the components: `load()` imports
the modules that register the built-ins (by name, the way plugins are imported) and then the
plugins (`plugins.py`). Components import this module and `register` into it.
"""

from __future__ import annotations

import importlib
from typing import Any


class Registry(dict[str, Any]):
    """name -> component, filled by the modules in `providers` and by plugins."""

    def __init__(self, kind: str, providers: tuple[str, ...]) -> None:
        super().__init__()
        self.kind = kind
        self.providers = providers

    def register(self, entry: Any) -> Any:
        """Add `entry` under `entry.name`; a name is registered once."""
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name!r} registered twice")
        self[entry.name] = entry
        return entry

    def load(self, plugins: bool = False) -> Registry:
        """Import the built-in providers (and, with `plugins`, every plugin module); returns self."""
        for module in self.providers:
            importlib.import_module(module)
        if plugins:
            from tokenforget.plugins import load_plugins

            load_plugins()
        return self

    def known(self, name: str) -> Any:
        """The entry called `name`, importing providers and plugins first if needed; a ValueError
        listing the choices when there is none."""
        if name not in self.load():
            self.load(plugins=True)
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self[name]


METHODS = Registry("method", ("tokenforget.losses",))
IDENTIFIERS = Registry("identifier", ("tokenforget.identify.registry",))
ATTACKS = Registry("membership metric", ("tokenforget.evaluate.attacks",))
