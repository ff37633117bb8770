"""Method specs and the method registry: ``make``, ``spec``, ``list_methods``.

A method is registered as a :class:`MethodSpec` through the entry-point group
``dcbench_tesla.methods`` (built-in methods use it exactly as plugins do) or with
``register_method``. ``make(id, **overrides)`` builds its distiller.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import ENTRY_POINT_GROUPS, Registry, load_target


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
        role: ``"method"``, or ``"baseline"`` for the reference every result is reported beside.
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
    role: str = "method"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"MethodSpec {self.id!r}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def is_baseline(self) -> bool:
        """True for the method every other result is reported beside."""
        return self.role == "baseline"

    def card_for(self, dataset: str, ipc: int) -> ConfigCard | None:
        """The config card for ``dataset`` at ``ipc``, or None."""
        for card in self.config_cards:
            if card.dataset == dataset and card.ipc == ipc:
                return card
        return None

    def nearest_card(self, dataset: str, ipc: int) -> ConfigCard | None:
        """The card for ``dataset`` at ``ipc``, else that dataset's card at the nearest IPC, else None.

        "Nearest" is by ratio (IPC 5 is nearer to 10 than to 1); a tie takes the smaller IPC.
        """
        exact = self.card_for(dataset, ipc)
        if exact is not None:
            return exact
        cards = [card for card in self.config_cards if card.dataset == dataset]
        if not cards:
            return None
        return min(cards, key=lambda card: (abs(math.log(card.ipc / ipc)), card.ipc))

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


METHODS: Registry[MethodSpec] = Registry("method", entry_point_group=ENTRY_POINT_GROUPS["method"])

#: Roles a method can play. A ``baseline`` (the random real subset) is what every other result is
#: reported beside; it is never given its own baseline, and it carries the whole-dataset bound.
ROLES = ("method", "baseline")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register ``spec`` under ``spec.id`` (for code-level registration and tests)."""
    METHODS.register(spec.id, spec)
    return spec


def spec(method_id: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``method_id``.

    Raises:
        UserError: unknown id (with suggestions) or a plugin that fails to load.
    """
    return METHODS.get_as(method_id, MethodSpec)


def baseline_method() -> str:
    """Id of the registered method whose role is ``baseline``.

    Raises:
        UserError: no registered method has that role.
    """
    for method_id in METHODS.names():
        try:
            if spec(method_id).is_baseline:
                return method_id
        except UserError:
            continue  # a broken plugin cannot be the baseline
    raise UserError("no registered method has the role 'baseline' (the random real subset); reinstall dcbench-tesla")


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
    return build_distiller(method_spec, options, context or RunContext())


def build_distiller(method_spec: MethodSpec, options: Any, context: Any) -> Any:
    """The distiller of ``method_spec`` with already built ``options`` (see :func:`make`)."""
    distiller = distiller_class(method_spec)(options, context)
    distiller.spec = method_spec
    return distiller
