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

from dcbench_tesla.matching.problem import (
    SNAPSHOT_POLICIES,
    MatchingEngine,
    MatchingGradients,
    MatchingProblem,
    identity_augment,
)
from dcbench_tesla.registry import Registry

__all__ = [
    "ENGINES",
    "SNAPSHOT_POLICIES",
    "MatchingEngine",
    "MatchingGradients",
    "MatchingProblem",
    "identity_augment",
]

ENGINES: Registry[MatchingEngine] = Registry("gradient engine")
ENGINES.register_lazy("unrolled", "dcbench_tesla.matching.engines:unrolled")
ENGINES.register_lazy("tesla", "dcbench_tesla.matching.engines:tesla")
ENGINES.register_lazy("adjoint", "dcbench_tesla.matching.engines:adjoint")
