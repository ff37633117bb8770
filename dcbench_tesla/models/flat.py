"""A module's parameters as one flat vector, and the module as a function of that vector.

Expert trajectories store flat parameter vectors and trajectory matching differentiates through
functions of them, so both import :class:`FlatParams` from here.

The forward pass has three implementations (``FlatParams(module, mode=...)``):

- ``"fused"`` (default): the model's own ``functional_forward`` on views of the flat vector, with
  the fused operations of :mod:`dcbench_tesla.models.fused` where the model has them (ConvNet with
  instance norm, ReLU and average pooling);
- ``"functional"``: the same hand-written forward with stock ``torch.nn.functional`` operations;
- ``"module"``: ``torch.func.functional_call`` on the module (any model).

A model offers the first two by defining ``functional_forward(params, x, *, fused)`` and
``functional_unsupported() -> str | None`` (a reason when its configuration cannot, for example
BatchNorm's running statistics). Where it cannot, FlatParams falls back to ``"module"`` and
records why in :attr:`FlatParams.forward_note`. Every path computes the same function; the tests
check the values and first and second derivatives against ``functional_call`` in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["FORWARD_MODES", "FlatParams"]

#: The forward implementations, fastest first.
FORWARD_MODES = ("fused", "functional", "module")


class FlatParams:
    """A module's parameters as one flat vector, and the module as a function of that vector.

    The layout (parameter names in ``named_parameters()`` order and their shapes) is fixed at
    construction. Buffers (BatchNorm running statistics, ...) are not part of the flat vector:
    :meth:`forward` takes them from the module as they are.

    Args:
        module: The network whose parameters define the layout.
        mode: ``"fused"``, ``"functional"`` or ``"module"`` (see the module docstring). A model
            without a functional forward for its configuration falls back to ``"module"``.

    Attributes:
        forward_mode: The forward actually used.
        forward_note: Why it differs from the requested mode ("" when it does not).
    """

    def __init__(self, module: nn.Module, mode: str = "fused") -> None:
        if mode not in FORWARD_MODES:
            raise ValueError(f"unknown forward mode {mode!r}; choose from {', '.join(FORWARD_MODES)}")
        self.module = module
        named = list(module.named_parameters())
        if not named:
            raise ValueError("the module has no parameters to flatten")
        self.names: list[str] = [name for name, _ in named]
        self.shapes: list[torch.Size] = [p.shape for _, p in named]
        self.numels: list[int] = [p.numel() for _, p in named]
        self.requested_mode = mode
        self.forward_mode, self.forward_note = _resolve_mode(module, mode)

    @property
    def numel(self) -> int:
        """Total number of scalar parameters ``P``."""
        return sum(self.numels)

    def to_dict(self) -> dict[str, Any]:
        """The layout as plain JSON-serialisable data: ``{"names": [...], "shapes": [[...], ...]}``."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    def check_layout(self, layout: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless ``layout`` (from :meth:`to_dict`) matches this module's layout."""
        stored = dict(zip(layout.get("names", []), (list(s) for s in layout.get("shapes", [])), strict=True))
        mine = {name: list(shape) for name, shape in zip(self.names, self.shapes, strict=True)}
        if list(stored) == list(mine) and stored == mine:
            return
        problems = [f"{n}: stored {stored[n]} vs model {mine[n]}" for n in mine if n in stored and stored[n] != mine[n]]
        problems += [f"{n}: only in the model" for n in mine if n not in stored]
        problems += [f"{n}: only in the stored layout" for n in stored if n not in mine]
        if not problems:
            problems = ["same parameters in a different order"]
        raise ValueError("parameter layout does not match the model: " + "; ".join(problems[:6]))

    def flatten(self, module: nn.Module | None = None) -> Tensor:
        """Concatenate the parameters of ``module`` (default: this one) into a detached ``(P,)`` vector."""
        source = self.module if module is None else module
        params = dict(source.named_parameters())
        return torch.cat([params[name].detach().reshape(-1) for name in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a ``(P,)`` vector into ``{name: view with the parameter's shape}`` (differentiable)."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"expected a flat vector of {self.numel} parameters, got shape {tuple(flat.shape)}")
        chunks = torch.split(flat, self.numels)
        return {name: c.view(shape) for name, c, shape in zip(self.names, chunks, self.shapes, strict=True)}

    def assign(self, flat: Tensor, module: nn.Module | None = None) -> None:
        """Copy a ``(P,)`` vector into the parameters of ``module`` (default: this one), in place."""
        target = self.module if module is None else module
        params = dict(target.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(flat.detach()).items():
                params[name].copy_(value)

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        """Run the module on ``x`` with its parameters replaced by ``flat``; differentiable in both."""
        params = self.unflatten(flat)
        if self.forward_mode == "module":
            return functional_call(self.module, params, (x,))
        return self.module.functional_forward(params, x, fused=self.forward_mode == "fused")

    __call__ = forward


def _resolve_mode(module: nn.Module, mode: str) -> tuple[str, str]:
    """The forward mode ``module`` supports for ``mode``, and the reason for a fallback."""
    if mode == "module":
        return "module", ""
    name = type(module).__name__
    if not callable(getattr(module, "functional_forward", None)):
        return "module", f"{name} has no functional_forward: torch.func.functional_call is used"
    check = getattr(module, "functional_unsupported", None)
    reason = check() if callable(check) else None
    if reason:
        return "module", f"{name}: {reason}; torch.func.functional_call is used"
    if any(True for _ in module.buffers()):
        return "module", f"{name} has buffers the flat vector does not hold; torch.func.functional_call is used"
    return mode, ""
