"""``dcbench ls``: what each registry holds (methods, datasets, models, engines, protocols), presets and cards."""

from __future__ import annotations

import re
import warnings
from typing import Any

import click

from dcbench_tesla.cli.common import command

KINDS = ("methods", "datasets", "models", "engines", "protocols", "presets", "cards")
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Docstring markup as plain text (``:class:`ConvNet``` -> ConvNet, double backticks dropped)."""
    return _ROLE.sub(r"\1", text).replace("``", "")


def _registries() -> dict[str, Any]:
    from dcbench_tesla.data import DATASETS
    from dcbench_tesla.matching import ENGINES
    from dcbench_tesla.method import METHODS
    from dcbench_tesla.models import MODELS
    from dcbench_tesla.protocols import PROTOCOLS

    return {"datasets": DATASETS, "engines": ENGINES, "methods": METHODS, "models": MODELS, "protocols": PROTOCOLS}


def describe(registry: Any, name: str) -> str:
    """One line about an entry; a broken plugin is listed with its problem (and a warning), not a crash."""
    known = registry.description(name)
    if known:
        return known
    try:
        obj = registry.get(name)
    except Exception as exc:
        warnings.warn(f"{registry.kind} plugin {name!r} is broken: {exc}", stacklevel=2)
        return f"BROKEN: {exc}"
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
    return plain(text if isinstance(text, str) else (text[0] if text else ""))


def _rows(pairs: list[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in pairs), default=0)
    return [f"  {name.ljust(width)}  {text}" for name, text in pairs]


def _presets() -> list[str]:
    from dcbench_tesla.run.presets import load_preset, preset_names

    return _rows([(name, str(load_preset(name).get("description", ""))) for name in preset_names()])


def _cards() -> list[str]:
    from dcbench_tesla.method import METHODS, spec

    pairs = []
    for method_id in METHODS.names():
        try:
            cards = spec(method_id).config_cards
        except Exception as exc:  # a broken plugin: named, not a crash
            pairs.append((method_id, f"BROKEN: {exc}"))
            continue
        for card in sorted(cards, key=lambda c: (c.dataset, c.ipc)):
            pairs.append((f"{method_id} {card.dataset} IPC {card.ipc}", card.source or "(no source given)"))
    return _rows(pairs)


def listing(kind: str | None = None) -> str:
    """Lines ``name  description`` per registry, the shipped bench presets and the config cards (or just ``kind``)."""
    sections = []
    for title, registry in _registries().items():
        if kind is not None and title != kind:
            continue
        sections.append(f"{title}:\n" + "\n".join(_rows([(n, describe(registry, n)) for n in registry.names()])))
    for title, rows in (("presets", _presets), ("cards", _cards)):
        if kind == title:
            sections.append(f"{title}:\n" + "\n".join(rows()))
    return "\n\n".join(sections)


@command("ls")
@click.argument("kind", required=False, type=click.Choice(KINDS))
def ls_command(kind: str | None) -> None:
    """List methods, datasets, models, gradient engines, protocols; or the bench presets or config cards."""
    click.echo(listing(kind))
