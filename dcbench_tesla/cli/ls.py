"""``dcbench ls``: what each registry holds (methods, datasets, models, engines, protocols)."""

from __future__ import annotations

import warnings
from typing import Any

import click

from dcbench_tesla.cli.common import command

KINDS = ("methods", "datasets", "models", "engines", "protocols")


def _registries() -> dict[str, Any]:
    from dcbench_tesla.data import DATASETS
    from dcbench_tesla.evaluation import PROTOCOLS
    from dcbench_tesla.matching import ENGINES
    from dcbench_tesla.method import METHODS
    from dcbench_tesla.models import MODELS

    return {"datasets": DATASETS, "engines": ENGINES, "methods": METHODS, "models": MODELS, "protocols": PROTOCOLS}


def describe(registry: Any, name: str) -> str:
    """One line about an entry; a broken plugin is listed with its problem (and a warning), not a crash."""
    try:
        obj = registry.get(name)
    except Exception as exc:
        warnings.warn(f"{registry.kind} plugin {name!r} is broken: {exc}", stacklevel=2)
        return f"BROKEN: {exc}"
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
    return text if isinstance(text, str) else (text[0] if text else "")


def listing(kind: str | None = None) -> str:
    """Lines ``name  description`` per registry (or just ``kind``)."""
    sections = []
    for title, registry in _registries().items():
        if kind is not None and title != kind:
            continue
        names = registry.names()
        width = max((len(n) for n in names), default=0)
        rows = [f"  {name.ljust(width)}  {describe(registry, name)}" for name in names]
        sections.append(f"{title}:\n" + "\n".join(rows))
    return "\n\n".join(sections)


@command("ls")
@click.argument("kind", required=False, type=click.Choice(KINDS))
def ls_command(kind: str | None) -> None:
    """List registered methods, datasets, models, gradient engines and protocols."""
    click.echo(listing(kind))
