"""The saved-tensor meter: exact byte counts, release on backward, linear vs constant engines."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from dcbench_tesla.matching import ENGINES, MatchingProblem
from dcbench_tesla.models.flat import FlatParams
from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter

N_IMAGES, BATCH = 12, 4


def test_meter_counts_saved_tensors_and_releases_them():
    x = torch.randn(1000, requires_grad=True)
    y = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = x * y  # mul saves both operands: 2 x 1000 float32
        assert meter.current_bytes == 8000 and meter.saves == 2
        z.sum().backward()
    assert meter.current_bytes == 0 and meter.peak_bytes == 8000
    del z


def test_meter_counts_a_storage_once():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = x * x  # the same storage saved twice
        w = x[:10] * 2.0 + x[10:20] * x[20:30]  # views of the same storage
    assert meter.saves > 2 and meter.current_bytes == 8000
    del z
    assert meter.current_bytes == 8000  # still held by w's graph
    del w
    assert meter.current_bytes == 0 and meter.peak_bytes == 8000


def test_meter_releases_without_the_garbage_collector():
    """Ops that save their own output (exp, GroupNorm's statistics) must not leak via a cycle."""
    gc.disable()
    try:
        x = torch.randn(4, 8, 3, 3, requires_grad=True)
        with SavedTensorMeter() as meter:
            out = nn.functional.group_norm(x.exp(), 2).sum()
            (g,) = torch.autograd.grad(out, x, create_graph=True)
            g.sum().backward()
        del out, g
        assert meter.current_bytes == 0 and meter.peak_bytes > 0
    finally:
        gc.enable()


def test_meter_peak_is_reset_and_tracks_late_frees():
    x = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = x.sin()
        meter.reset_peak()
        assert meter.peak_bytes == 400
    z2 = x.cos()  # outside the context: not counted
    assert meter.current_bytes == 400
    del z, z2
    assert meter.current_bytes == 0 and meter.peak_mib == 400 / 2**20


def make_problem(steps: int) -> MatchingProblem:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3)
    )
    flat = FlatParams(net)
    theta0 = flat.flatten()
    gen = torch.Generator().manual_seed(1)
    return MatchingProblem(
        forward=flat.forward,
        theta_start=theta0,
        theta_target=theta0 + 0.01 * torch.randn(theta0.shape, generator=gen),
        images=torch.randn(N_IMAGES, 1, 6, 6, generator=gen),
        labels=torch.randn(N_IMAGES, 3, generator=gen),
        labels_learnable=True,
        batches=[torch.randperm(N_IMAGES, generator=gen)[:BATCH] for _ in range(steps)],
        augment=lambda x, i: torch.roll(x, i % 3, dims=-1),
        syn_lr=torch.tensor(0.1),
    )


def peaks(name: str, steps: list[int]) -> list[int]:
    engine = ENGINES.get(name)
    result = []
    for t in steps:
        problem = make_problem(t)
        with SavedTensorMeter() as meter:
            engine(problem)
        assert meter.current_bytes == 0, "the engine left saved tensors alive"
        result.append(meter.peak_bytes)
    return result


def test_unrolled_memory_grows_linearly():
    p1, p2, p4, p8 = peaks("unrolled", [1, 2, 4, 8])
    per_step = p2 - p1
    assert per_step > 0 and p8 > 3 * p1
    assert p4 - p2 == pytest.approx(2 * per_step, rel=0.01)
    assert p8 - p4 == pytest.approx(4 * per_step, rel=0.01)


@pytest.mark.parametrize("name", [n for n in ENGINES.names() if ENGINES.get(n).constant_memory])
def test_constant_memory_engines_do_not_grow(name):
    p1, p8 = peaks(name, [1, 8])
    one_batch = BATCH * 36 * 4
    assert abs(p8 - p1) <= one_batch


def test_adjoint_reports_its_snapshots():
    problem = make_problem(5)
    out = ENGINES.get("adjoint")(problem)
    assert out.snapshot_bytes == 6 * problem.theta_start.numel() * 4
    assert ENGINES.get("tesla")(problem).snapshot_bytes == 0
