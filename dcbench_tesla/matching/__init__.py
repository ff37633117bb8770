"""Trajectory matching: the problem, its gradient engines, and the engine registry.

``ENGINES`` maps a name to a :class:`MatchingEngine` (``engine(problem) -> MatchingGradients``):

- ``unrolled``: MTT's engine, exact, memory linear in the number of inner steps;
- ``tesla``: TESLA's Algorithm 1, constant memory, first-order (exact only for one step);
- ``adjoint``: ours, exact and constant memory (plus flat parameter snapshots: one per step on the
  device, in host memory, or about ``2 sqrt(T)`` with recomputation; ``MatchingProblem.snapshot_policy``).

A third-party engine registers with ``ENGINES.register("name", fn)``; it sets the attributes
``exact`` and ``constant_memory`` so the test-suite checks it against ``unrolled``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dcbench_tesla.registry import Registry, load_target

if TYPE_CHECKING:
    from dcbench_tesla.matching.problem import MatchingEngine

#: The snapshot policies of exact engines (see :mod:`dcbench_tesla.matching.snapshots`).
SNAPSHOT_POLICIES = ("device", "host", "checkpoint")

__all__ = [
    "ENGINES",
    "SNAPSHOT_POLICIES",
    "MatchingEngine",
    "MatchingGradients",
    "MatchingProblem",
    "identity_augment",
]

ENGINES: Registry[MatchingEngine] = Registry("gradient engine")
ENGINES.register_lazy(
    "unrolled",
    "dcbench_tesla.matching.engines:unrolled",
    "MTT's engine: unroll all T steps with graphs, then one backward pass. Exact; memory linear in T.",
)
ENGINES.register_lazy(
    "tesla",
    "dcbench_tesla.matching.engines:tesla",
    "TESLA's engine (Algorithm 1 of Cui et al., ICML 2023): constant memory, first-order.",
)
ENGINES.register_lazy(
    "adjoint",
    "dcbench_tesla.matching.engines:adjoint",
    "Ours: exact and constant memory, a reverse (adjoint) sweep with Hessian-vector products.",
)

_LAZY = {
    name: f"dcbench_tesla.matching.problem:{name}"
    for name in ("MatchingEngine", "MatchingGradients", "MatchingProblem", "identity_augment")
}


def __getattr__(name: str) -> Any:
    """The problem's classes, imported (with torch) on first use."""
    if name in _LAZY:
        return load_target(_LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
