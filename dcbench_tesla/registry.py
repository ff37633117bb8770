"""One small generic registry used for methods, datasets, models, engines and protocols.

Entries are registered eagerly (a decorator or ``register(name, obj)``) or lazily
(``register_lazy(name, "package.module:attr")``); lazy targets are imported only when
first looked up. The method, dataset and model registries also read their entry-point
groups (:data:`ENTRY_POINT_GROUPS`), so built-in methods and third-party plugins arrive
the same way, and a broken plugin is a clear error naming it, never a crash.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dcbench_tesla.errors import UserError

T = TypeVar("T")

#: Entry-point group of each plugin kind: a package declares ``name = module:attr`` under one of these.
ENTRY_POINT_GROUPS = {
    "method": "dcbench_tesla.methods",
    "dataset": "dcbench_tesla.datasets",
    "model": "dcbench_tesla.models",
}


def load_target(target: str) -> object:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"lazy target {target!r} must look like 'package.module:attr'")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Maps names to objects of one kind, with lazy targets and helpful errors.

    Args:
        kind: Human-readable kind ("method", "dataset", ...), used in messages.
        entry_point_group: Optional entry-point group read (lazily) on first use.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._entry_point_group = entry_point_group
        self._entry_points_read = entry_point_group is None
        self._loaded: dict[str, T] = {}
        self._lazy: dict[str, str | importlib.metadata.EntryPoint] = {}
        self._descriptions: dict[str, str] = {}

    # -- registration -------------------------------------------------------------
    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is None:

            def decorator(target: T) -> T:
                self._add_loaded(name, target)
                return target

            return decorator
        self._add_loaded(name, obj)
        return obj

    def register_lazy(self, name: str, target: str | importlib.metadata.EntryPoint, description: str = "") -> None:
        """Register a ``"module:attr"`` target (or entry point) imported on first lookup.

        ``description`` lets ``dcbench ls`` describe the entry without importing it.
        """
        self._check_new(name)
        self._lazy[name] = target
        if description:
            self._descriptions[name] = description

    def description(self, name: str) -> str | None:
        """The description given at lazy registration, or None (then the entry must be loaded to say)."""
        return self._descriptions.get(name)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and interactive sessions); unknown names raise KeyError."""
        self._read_entry_points()
        if name not in self._loaded and name not in self._lazy:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._lazy.pop(name, None)

    def _add_loaded(self, name: str, obj: T) -> None:
        if name in self._lazy:
            # A lazy target resolving to itself (its module registers by decorator) is fine.
            del self._lazy[name]
        self._check_new(name)
        self._loaded[name] = obj

    def _check_new(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._loaded or name in self._lazy:
            raise ValueError(f"duplicate {self.kind} name {name!r}: it is already registered")

    # -- lookup ---------------------------------------------------------------------
    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=self._entry_point_group):
            if ep.name in seen:
                continue  # the same distribution seen twice on sys.path
            seen.add(ep.name)
            if ep.name in self._loaded or ep.name in self._lazy:
                warnings.warn(
                    f"plugin {ep.value!r} tries to register {self.kind} {ep.name!r}, "
                    "which already exists; ignoring the plugin",
                    stacklevel=2,
                )
                continue
            self._lazy[ep.name] = ep

    def names(self) -> list[str]:
        """All registered names (without importing lazy targets), sorted."""
        self._read_entry_points()
        return sorted({*self._loaded, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UserError: if the name is unknown (with suggestions) or its plugin fails to load.
        """
        self._read_entry_points()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._lazy:
            raise UserError(self.unknown_message(name))
        target = self._lazy[name]
        try:
            obj = target.load() if isinstance(target, importlib.metadata.EntryPoint) else load_target(target)
        except Exception as exc:  # a broken plugin must not crash the harness
            where = target.value if isinstance(target, importlib.metadata.EntryPoint) else target
            raise UserError(
                f"{self.kind} {name!r} could not be loaded from {where!r}: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall the package that provides it."
            ) from exc
        if name in self._lazy:  # the import may have registered it by decorator already
            del self._lazy[name]
            self._loaded[name] = obj  # type: ignore[assignment]
        return self._loaded[name]

    def get_as(self, name: str, expected: type) -> T:
        """:meth:`get`, checking the entry is an instance of ``expected`` (what a plugin must provide).

        Raises:
            UserError: unknown name, a plugin that fails to load, or one that provides something else.
        """
        found = self.get(name)
        if not isinstance(found, expected):
            raise UserError(
                f"{self.kind} plugin {name!r} does not provide a {expected.__name__} (got {type(found).__name__}); "
                f"its entry point must name a {expected.__module__}.{expected.__name__} object."
            )
        return found

    def unknown_message(self, name: str) -> str:
        """Message for an unknown name: close matches, then everything available."""
        available = self.names()
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(available) or '(none)'}."
