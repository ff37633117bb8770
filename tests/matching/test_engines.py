"""Gradient engines: exactness against unrolled MTT, TESLA's own formula, finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcbench_tesla.matching import ENGINES, SNAPSHOT_POLICIES, MatchingEngine, MatchingProblem
from dcbench_tesla.models.convnet import ConvNet
from dcbench_tesla.models.flat import FlatParams

N_IMAGES, N_CLASSES, BATCH = 12, 3, 4
ENGINE_NAMES = ENGINES.names()
# Student variants every engine is checked with: a Sequential (functional_call), and the ConvNet
# through each of FlatParams' forward paths (fused instance norm + ReLU and pooling, stock functional
# ops, functional_call).
MODELS = ["sequential", "convnet-fused", "convnet-functional", "convnet-module"]


def tiny_net(dtype: torch.dtype = torch.float64, act: type[nn.Module] = nn.Softplus) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        act(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, N_CLASSES),
    )
    return net.to(dtype)


def step_augment(x: torch.Tensor, step: int) -> torch.Tensor:
    """Deterministic, differentiable and different for every step: roll, flip, contrast, brightness."""
    x = torch.roll(x, shifts=step % 3, dims=-1)
    if step % 2:
        x = x.flip(-1)
    return x * (1.0 + 0.1 * (step % 4)) + 0.05 * ((step % 5) - 2)


def tiny_flat(model: str, dtype: torch.dtype, act: type[nn.Module]) -> FlatParams:
    if model == "sequential":
        return FlatParams(tiny_net(dtype, act))
    torch.manual_seed(0)
    net = ConvNet(1, N_CLASSES, 6, width=8, depth=2).to(dtype)  # instance norm, ReLU, 6 -> 3 -> 1 pools
    flat = FlatParams(net, mode=model.split("-")[1])
    assert flat.forward_mode == model.split("-")[1]
    return flat


def make_problem(
    steps: int,
    dtype: torch.dtype = torch.float64,
    labels: str = "learnable",
    beta: float = 0.3,
    act: type[nn.Module] = nn.Softplus,
    seed: int = 1,
    model: str = "sequential",
    policy: str = "device",
) -> MatchingProblem:
    gen = torch.Generator().manual_seed(seed)
    flat = tiny_flat(model, dtype, act)
    theta0 = flat.flatten()
    target = theta0 + 0.05 * torch.randn(theta0.shape, generator=gen, dtype=dtype)
    images = torch.randn(N_IMAGES, 1, 6, 6, generator=gen, dtype=dtype)
    if labels == "hard":
        y = torch.arange(N_IMAGES) % N_CLASSES
    elif labels == "soft":
        y = torch.softmax(torch.randn(N_IMAGES, N_CLASSES, generator=gen, dtype=dtype), dim=1)
    else:
        y = torch.randn(N_IMAGES, N_CLASSES, generator=gen, dtype=dtype)
    batches = [torch.randperm(N_IMAGES, generator=gen)[:BATCH] for _ in range(steps)]
    return MatchingProblem(
        forward=flat.forward,
        theta_start=theta0,
        theta_target=target,
        images=images,
        labels=y,
        labels_learnable=labels == "learnable",
        batches=batches,
        augment=step_augment,
        syn_lr=torch.tensor(beta, dtype=dtype),
        snapshot_policy=policy,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- registry and conformance ---------------------------------------------------------------
def test_builtin_engines_registered():
    assert {"unrolled", "tesla", "adjoint"} <= set(ENGINE_NAMES)
    assert ENGINES.get("unrolled").exact and ENGINES.get("adjoint").exact
    assert not ENGINES.get("tesla").exact


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_engine_declares_its_attributes(name):
    engine = ENGINES.get(name)
    assert isinstance(engine, MatchingEngine)
    assert isinstance(engine.exact, bool) and isinstance(engine.constant_memory, bool)


@pytest.mark.parametrize("labels", ["hard", "soft", "learnable"])
@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_engine_conformance(name, labels):
    problem = make_problem(3, labels=labels)
    before = [t.clone() for t in (problem.images, problem.labels, problem.theta_start, problem.syn_lr)]
    ref = ENGINES.get("unrolled")(problem)
    with torch.no_grad():  # engines must not depend on the caller's grad mode
        out = ENGINES.get(name)(problem)

    assert out.images.shape == problem.images.shape and out.images.dtype == problem.images.dtype
    assert out.syn_lr.shape == () and out.syn_lr.dtype == problem.syn_lr.dtype
    assert out.loss.shape == () and out.theta_end.shape == problem.theta_start.shape
    if labels == "learnable":
        assert out.labels is not None and out.labels.shape == problem.labels.shape
        assert out.labels.abs().sum() > 0
    else:
        assert out.labels is None
    assert out.is_finite() and out.images.abs().sum() > 0
    for t in (out.loss, out.images, out.syn_lr, out.theta_end):
        assert not t.requires_grad
    # The loss and theta_T are exact for every engine; only the gradients may be approximate.
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.theta_end, ref.theta_end, rtol=1e-12, atol=1e-14)
    # Images only touched by no batch get no gradient.
    unused = sorted(set(range(N_IMAGES)) - {int(i) for b in problem.batches for i in b})
    assert out.images[unused].abs().sum() == 0
    after = (problem.images, problem.labels, problem.theta_start, problem.syn_lr)
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert not problem.images.requires_grad


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_engine_accepts_inputs_that_require_grad(name):
    problem = make_problem(2)
    problem.images.requires_grad_(True)
    problem.labels.requires_grad_(True)
    problem.syn_lr.requires_grad_(True)
    out = ENGINES.get(name)(problem)
    assert out.is_finite() and problem.images.grad is None


# -- exactness -------------------------------------------------------------------------------
# Every engine that declares ``exact`` (other than the reference itself) is checked on arrival.
EXACT_ENGINES = [name for name in ENGINE_NAMES if ENGINES.get(name).exact and name != "unrolled"]


def test_exact_engines_are_registered():
    assert "adjoint" in EXACT_ENGINES and "tesla" not in EXACT_ENGINES


@pytest.mark.parametrize("steps", [1, 5, 20])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_exact_engines_match_unrolled(name, dtype, steps):
    engine = ENGINES.get(name)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    problem = make_problem(steps, dtype=dtype)
    ref = ENGINES.get("unrolled")(problem)
    out = engine(problem)
    assert rel(out.images, ref.images) <= tol
    assert rel(out.labels, ref.labels) <= tol
    assert rel(out.syn_lr, ref.syn_lr) <= tol
    assert rel(out.loss, ref.loss) <= tol


@pytest.mark.parametrize("labels", ["hard", "learnable"])
@pytest.mark.parametrize("model", MODELS[1:])
@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_exact_engines_match_unrolled_for_every_model_path(name, model, labels):
    problem = make_problem(6, model=model, labels=labels)
    ref, out = ENGINES.get("unrolled")(problem), ENGINES.get(name)(problem)
    assert rel(out.images, ref.images) <= 1e-10
    assert rel(out.syn_lr, ref.syn_lr) <= 1e-10
    assert rel(out.loss, ref.loss) <= 1e-12
    if labels == "learnable":
        assert rel(out.labels, ref.labels) <= 1e-10


@pytest.mark.parametrize("model", ["convnet-fused", "convnet-functional"])
def test_forward_paths_give_the_same_gradients(model):
    """The ConvNet's three forward paths are one function: every engine's answer agrees across them."""
    for name in ENGINE_NAMES:
        ref = ENGINES.get(name)(make_problem(4, model="convnet-module"))
        out = ENGINES.get(name)(make_problem(4, model=model))
        assert rel(out.images, ref.images) <= 1e-11 and rel(out.labels, ref.labels) <= 1e-11
        assert rel(out.syn_lr, ref.syn_lr) <= 1e-11


@pytest.mark.parametrize("name", EXACT_ENGINES)
def test_exact_engines_sum_repeated_images(name):
    """An image drawn twice in one batch and again in a later step sums every contribution."""
    engine = ENGINES.get(name)
    problem = make_problem(3)
    problem.batches = [torch.tensor([0, 0, 1]), torch.tensor([0, 2, 3]), torch.tensor([1, 1, 1, 4])]
    ref, out = ENGINES.get("unrolled")(problem), engine(problem)
    assert rel(out.images, ref.images) <= 1e-10 and rel(out.labels, ref.labels) <= 1e-10


FD_CASES = [("unrolled", "sequential"), ("adjoint", "sequential"), ("adjoint", "convnet-fused")]


@pytest.mark.parametrize("name,model", FD_CASES, ids=["-".join(c) for c in FD_CASES])
def test_exact_engines_match_finite_differences(name, model):
    # ReLU (convnet-fused) is piecewise smooth: central differences with h = 1e-7 stay on one piece
    # for these inputs; the Sequential uses Softplus.
    h = 1e-6 if model == "sequential" else 1e-7
    problem = make_problem(4, labels="learnable", model=model)
    engine = ENGINES.get(name)
    out = engine(problem)

    def loss_at(images=None, labels=None, beta=None) -> float:
        p = make_problem(4, labels="learnable", model=model)
        p.images = problem.images if images is None else images
        p.labels = problem.labels if labels is None else labels
        p.syn_lr = problem.syn_lr if beta is None else beta
        return float(engine(p).loss)

    gen = torch.Generator().manual_seed(3)
    used = torch.cat(list(problem.batches)).unique()
    for flat_index in used[torch.randint(len(used), (3,), generator=gen)] * 36 + torch.randint(36, (3,), generator=gen):
        e = torch.zeros(problem.images.numel(), dtype=torch.float64)
        e[flat_index] = h
        e = e.view_as(problem.images)
        fd = (loss_at(images=problem.images + e) - loss_at(images=problem.images - e)) / (2 * h)
        analytic = float(out.images.reshape(-1)[flat_index])
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)
    e = torch.zeros_like(problem.labels)
    row = int(used[0])
    e[row, 1] = h
    fd = (loss_at(labels=problem.labels + e) - loss_at(labels=problem.labels - e)) / (2 * h)
    assert float(out.labels[row, 1]) == pytest.approx(fd, rel=1e-5, abs=1e-8)
    fd = (loss_at(beta=problem.syn_lr + h) - loss_at(beta=problem.syn_lr - h)) / (2 * h)
    assert float(out.syn_lr) == pytest.approx(fd, rel=1e-5)


# -- TESLA -------------------------------------------------------------------------------------
def test_tesla_equals_unrolled_at_one_step():
    for labels in ("hard", "learnable"):
        problem = make_problem(1, labels=labels)
        ref, out = ENGINES.get("unrolled")(problem), ENGINES.get("tesla")(problem)
        assert rel(out.images, ref.images) <= 1e-12
        assert rel(out.syn_lr, ref.syn_lr) <= 1e-12
        if labels == "learnable":
            assert rel(out.labels, ref.labels) <= 1e-12


def tesla_by_formula(problem: MatchingProblem):
    """TESLA written out directly: L(theta_0 - beta G(X)), each g_i(X_i) at a constant theta_i."""
    images = problem.images.detach().clone().requires_grad_(True)
    logits = problem.labels.detach().clone().requires_grad_(True)
    beta = problem.syn_lr.detach().clone().requires_grad_(True)
    theta = problem.theta_start.detach()
    total = torch.zeros_like(theta)
    for i, batch in enumerate(problem.batches):
        leaf = theta.detach().requires_grad_(True)
        out = problem.forward(leaf, step_augment(images[batch], i))
        loss = F.cross_entropy(out, torch.softmax(logits[batch], dim=1))
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)  # depends on X_i only
        total = total + g
        theta = (theta - problem.syn_lr * g).detach()  # theta_i: constants
    end = problem.theta_start - beta * total
    dist = ((problem.theta_start - problem.theta_target) ** 2).sum()
    loss = ((end - problem.theta_target) ** 2).sum() / dist
    return torch.autograd.grad(loss, [images, logits, beta])


@pytest.mark.parametrize("model", MODELS)
def test_tesla_matches_its_own_formula(model):
    problem = make_problem(5, model=model)
    gx, gy, gb = tesla_by_formula(problem)
    out = ENGINES.get("tesla")(problem)
    assert rel(out.images, gx) <= 1e-12
    assert rel(out.labels, gy) <= 1e-12
    assert rel(out.syn_lr, gb) <= 1e-12


def test_tesla_differs_from_unrolled_after_several_steps():
    problem = make_problem(10)
    ref, out = ENGINES.get("unrolled")(problem), ENGINES.get("tesla")(problem)
    assert rel(out.images, ref.images) > 1e-3
    assert rel(out.syn_lr, ref.syn_lr) > 1e-3


# -- snapshot policies ------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 7, 10])
@pytest.mark.parametrize("policy", [p for p in SNAPSHOT_POLICIES if p != "device"])
def test_snapshot_policies_give_the_device_gradient(policy, steps):
    engine = ENGINES.get("adjoint")
    ref = engine(make_problem(steps, model="convnet-fused"))
    out = engine(make_problem(steps, model="convnet-fused", policy=policy))
    assert out.snapshot_policy == policy and ref.snapshot_policy == "device"
    for got, want in ((out.images, ref.images), (out.labels, ref.labels), (out.syn_lr, ref.syn_lr)):
        assert rel(got, want) <= 1e-12
    torch.testing.assert_close(out.theta_end, ref.theta_end, rtol=1e-14, atol=0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-14, atol=0)


def _snapshot_vectors(policy: str, steps: int) -> tuple[int, int, int]:
    problem = make_problem(steps, policy=policy)
    out = ENGINES.get("adjoint")(problem)
    vector = problem.theta_start.numel() * problem.theta_start.element_size()
    assert out.snapshot_bytes % vector == 0 and out.host_snapshot_bytes % vector == 0
    return out.snapshot_bytes // vector, out.host_snapshot_bytes // vector, out.recomputed_steps


def test_snapshot_byte_counts_per_policy():
    assert _snapshot_vectors("device", 5) == (6, 0, 0)  # theta_0 .. theta_5
    assert _snapshot_vectors("host", 5) == (2, 5, 0)  # on the CPU: theta_T and the row in use; buffer: 0..4


def test_checkpoint_snapshots_grow_as_sqrt_steps():
    counts = {t: _snapshot_vectors("checkpoint", t) for t in (4, 16, 64, 100)}
    for t, (device, host, recomputed) in counts.items():
        k = math.ceil(math.sqrt(t))
        assert host == 0
        assert device <= 2 * k, (t, device)  # checkpoints + one segment + theta_T
        assert 0 < recomputed < t  # interior steps of every segment but the last
    assert counts[100][0] / counts[4][0] <= math.sqrt(100 / 4)
    assert counts[100][0] / counts[16][0] <= math.sqrt(100 / 16)
    assert counts[100][0] < _snapshot_vectors("device", 100)[0] / 5


def test_checkpoint_saved_plus_snapshot_bytes_grow_no_faster_than_sqrt_steps():
    """What the profiler reports (autograd's saved-tensor peak + device snapshots) for ``checkpoint``."""
    from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter

    totals = {}
    for t in (4, 16, 64):
        problem = make_problem(t, policy="checkpoint")
        with SavedTensorMeter() as meter:
            out = ENGINES.get("adjoint")(problem)
        totals[t] = meter.peak_bytes + out.snapshot_bytes
    assert totals[16] / totals[4] <= math.sqrt(16 / 4)
    assert totals[64] / totals[4] <= math.sqrt(64 / 4)


def test_problem_rejects_an_unknown_snapshot_policy():
    with pytest.raises(ValueError, match="snapshot policy"):
        make_problem(2, policy="disk")


# -- augmentation replay ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_pass_replays_the_same_augmentation(name):
    problem = make_problem(4)
    calls: dict[int, list[torch.Tensor]] = {}

    def recording_augment(x: torch.Tensor, step: int) -> torch.Tensor:
        calls.setdefault(step, []).append(x.detach().clone())
        return step_augment(x, step)

    problem.augment = recording_augment
    ENGINES.get(name)(problem)
    assert sorted(calls) == list(range(problem.num_steps))
    for step, seen in calls.items():
        expected = problem.images[problem.batches[step]]
        assert all(torch.equal(x, expected) for x in seen)


# -- FlatParams and MatchingProblem -----------------------------------------------------------
def test_flat_params_round_trip_and_forward():
    net = tiny_net()
    flat = FlatParams(net)
    theta = flat.flatten()
    assert theta.shape == (flat.numel,) == (sum(p.numel() for p in net.parameters()),)
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(flat.forward(theta, x), net(x))
    other = tiny_net()
    flat.assign(theta + 1.0, other)
    torch.testing.assert_close(flat.flatten(other), theta + 1.0)
    parts = flat.unflatten(theta)
    assert list(parts) == flat.names and [p.shape for p in parts.values()] == flat.shapes


def test_flat_params_layout_serialises_and_checks():
    flat = FlatParams(tiny_net())
    layout = flat.to_dict()
    assert layout["names"][0] == "0.weight" and layout["shapes"][0] == [8, 1, 3, 3]
    flat.check_layout(layout)
    bad = {"names": layout["names"], "shapes": [[9, 1, 3, 3]] + layout["shapes"][1:]}
    with pytest.raises(ValueError, match="0.weight"):
        flat.check_layout(bad)
    with pytest.raises(ValueError):
        flat.unflatten(torch.zeros(3))


def test_problem_validation():
    good = make_problem(2)
    with pytest.raises(ValueError, match="at least one"):
        MatchingProblem(**{**good.__dict__, "batches": []})
    with pytest.raises(ValueError, match="labels"):
        MatchingProblem(**{**good.__dict__, "labels": good.labels[:5]})
    with pytest.raises(ValueError, match="labels_learnable"):
        MatchingProblem(**{**good.__dict__, "labels": torch.zeros(N_IMAGES, dtype=torch.long)})
    with pytest.raises(ValueError, match="syn_lr"):
        MatchingProblem(**{**good.__dict__, "syn_lr": torch.ones(2)})
