"""Method specs and the method registry: ``make``, ``spec``, ``list_methods``.

A method is registered as a :class:`MethodSpec` through the entry-point group
``dcbench_tesla.methods`` (built-in methods use it exactly as plugins do) or with
``register_method``. ``make(id, **overrides)`` builds its distiller.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import METHOD_ENTRY_POINT_GROUP, Registry, load_target


@dataclass(frozen=True)
class ConfigCard:
    """Per-dataset, per-IPC settings of a method, with where they come from.

    Attributes:
        dataset: Dataset name.
        ipc: Images per class.
        options: Method options (override the method's defaults).
        zca: Whether the dataset is ZCA-whitened for this card (None: leave as is).
        source: Where the numbers come from (paper table, repository README, ...).
    """

    dataset: str
    ipc: int
    options: dict[str, Any] = field(default_factory=dict)
    zca: bool | None = None
    source: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """Everything needed to build a method and to cite what it should reach.

    Attributes:
        id: Registry name ("tesla").
        entry_point: ``"module:Class"`` of the :class:`~dcbench_tesla.distiller.Distiller`.
        kwargs: Default option overrides applied on top of the distiller's ``Config``.
        description: One line for ``dcbench ls``.
        paper: Citation of the method's paper.
        reference_accuracy: Published test accuracy (%), ``{dataset: {ipc: value}}``.
        config_cards: Per-dataset/IPC settings.
        eval_lr: Evaluation learning rate: ``"learned"`` (the set's learned step size) or a number.
        smoke_options: Options that make the method tiny and fast (conformance tests, CI).
    """

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    reference_accuracy: dict[str, dict[int, float]] = field(default_factory=dict)
    config_cards: tuple[ConfigCard, ...] = ()
    eval_lr: str | float = 0.01
    smoke_options: dict[str, Any] = field(default_factory=dict)

    def card_for(self, dataset: str, ipc: int) -> ConfigCard | None:
        """The config card for ``dataset`` at ``ipc``, or None."""
        for card in self.config_cards:
            if card.dataset == dataset and card.ipc == ipc:
                return card
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (written into every result)."""
        data = dataclasses.asdict(self)
        data["reference_accuracy"] = {
            ds: {str(k): v for k, v in by_ipc.items()} for ds, by_ipc in self.reference_accuracy.items()
        }
        return data

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodSpec:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["config_cards"] = tuple(ConfigCard(**c) for c in data.get("config_cards", ()))
        data["reference_accuracy"] = {
            ds: {int(k): v for k, v in by_ipc.items()} for ds, by_ipc in data.get("reference_accuracy", {}).items()
        }
        return cls(**data)


METHODS: Registry[MethodSpec] = Registry("method", entry_point_group=METHOD_ENTRY_POINT_GROUP)


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register ``spec`` under ``spec.id`` (for code-level registration and tests)."""
    METHODS.register(spec.id, spec)
    return spec


def spec(method_id: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``method_id``.

    Raises:
        UserError: unknown id (with suggestions) or a plugin that fails to load.
    """
    found = METHODS.get(method_id)
    if not isinstance(found, MethodSpec):
        raise UserError(
            f"method plugin {method_id!r} does not provide a MethodSpec (got {type(found).__name__}); "
            "its entry point must name a dcbench_tesla.MethodSpec object."
        )
    return found


def list_methods() -> list[str]:
    """Names of every registered method (plugins included), without loading them."""
    return METHODS.names()


def distiller_class(method_spec: MethodSpec) -> type:
    """Import the distiller class named by ``method_spec.entry_point``."""
    try:
        return load_target(method_spec.entry_point)  # type: ignore[return-value]
    except Exception as exc:
        raise UserError(
            f"method {method_spec.id!r}: cannot import {method_spec.entry_point!r}: {type(exc).__name__}: {exc}"
        ) from exc


def make(method_id: str, context: Any = None, **overrides: Any) -> Any:
    """Build the distiller of ``method_id`` with ``overrides`` on its defaults.

    Args:
        method_id: Registered method name.
        context: A :class:`~dcbench_tesla.distiller.RunContext` (default: CPU, default cache).
        **overrides: Method options; unknown ones raise a UserError listing the valid ones.

    Returns:
        A :class:`~dcbench_tesla.distiller.Distiller`, not yet reset.
    """
    from dcbench_tesla.config import build_options
    from dcbench_tesla.distiller import RunContext

    method_spec = spec(method_id)
    cls = distiller_class(method_spec)
    options = build_options(cls.Config, {**method_spec.kwargs, **overrides}, owner=f"method {method_id!r}")
    distiller = cls(options, context or RunContext())
    distiller.spec = method_spec
    return distiller
