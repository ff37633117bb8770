"""The text of ``dcbench ls``: what each registry holds."""

from __future__ import annotations

import warnings

from dcbench_tesla.data import DATASETS
from dcbench_tesla.evaluation import PROTOCOLS
from dcbench_tesla.matching import ENGINES
from dcbench_tesla.method import METHODS
from dcbench_tesla.models import MODELS
from dcbench_tesla.registry import Registry


def _describe(registry: Registry, name: str) -> str:
    try:
        obj = registry.get(name)
    except Exception as exc:  # a broken plugin is listed with its problem, not a crash
        warnings.warn(f"{registry.kind} plugin {name!r} is broken: {exc}", stacklevel=2)
        return f"BROKEN: {exc}"
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
    return text if isinstance(text, str) else (text[0] if text else "")


def _registries() -> dict[str, Registry]:
    registries: dict[str, Registry] = {
        "datasets": DATASETS,
        "engines": ENGINES,
        "methods": METHODS,
        "models": MODELS,
        "protocols": PROTOCOLS,
    }
    return registries


def listing(kind: str | None = None) -> str:
    """Lines ``name  description`` per registry (or just ``kind``)."""
    sections = []
    for title, registry in _registries().items():
        if kind is not None and title != kind:
            continue
        names = registry.names()
        width = max((len(n) for n in names), default=0)
        rows = [f"  {name.ljust(width)}  {_describe(registry, name)}" for name in names]
        sections.append(f"{title}:\n" + "\n".join(rows))
    return "\n\n".join(sections)
