"""Gradient agreement and saved-tensor memory of the trajectory-matching engines, as Markdown.

Runs every registered engine on a small ConvNet problem (1x6x6 inputs, width 8, GroupNorm,
Softplus, 3 classes, 12 synthetic images, batches of 4, learnable label logits, a per-step
deterministic augmentation) and prints:

1. the relative error ``||g_engine - g_unrolled|| / ||g_unrolled||`` of the image, label-logit and
   step-size gradients and of the loss, per number of inner steps ``T``, in float64 and float32;
2. the peak bytes of autograd's saved tensors during the engine call (deterministic, from
   :class:`dcbench_tesla.profiling.saved_tensors.SavedTensorMeter`), plus the parameter snapshots
   an engine keeps outside autograd;
3. TESLA's error at a fixed T as the step size grows (in units of the top Hessian eigenvalue).

Usage::

    python benchmarks/engine_agreement.py [--steps 1,5,10,20] [--memory-steps 1,2,4,8,16] [--beta 0.03]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dcbench_tesla.matching import ENGINES, MatchingProblem
from dcbench_tesla.models.flat import FlatParams
from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter
from dcbench_tesla.provenance import provenance

N_IMAGES, N_CLASSES, BATCH = 12, 3, 4


def tiny_net(dtype: torch.dtype) -> nn.Module:
    """The small ConvNet used by tests/matching/test_engines.py."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.Softplus(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, N_CLASSES),
    )
    return net.to(dtype)


def step_augment(x: torch.Tensor, step: int) -> torch.Tensor:
    """Deterministic per-step roll, flip, contrast and brightness change (differentiable)."""
    x = torch.roll(x, shifts=step % 3, dims=-1)
    if step % 2:
        x = x.flip(-1)
    return x * (1.0 + 0.1 * (step % 4)) + 0.05 * ((step % 5) - 2)


def make_problem(steps: int, dtype: torch.dtype, beta: float) -> MatchingProblem:
    """A matching problem with learnable label logits; float32 is the float64 problem rounded."""
    gen = torch.Generator().manual_seed(1)
    flat = FlatParams(tiny_net(torch.float64))
    theta0 = flat.flatten()
    target = theta0 + 0.05 * torch.randn(theta0.shape, generator=gen, dtype=torch.float64)
    images = torch.randn(N_IMAGES, 1, 6, 6, generator=gen, dtype=torch.float64)
    labels = torch.randn(N_IMAGES, N_CLASSES, generator=gen, dtype=torch.float64)
    flat.module.to(dtype)
    return MatchingProblem(
        forward=flat.forward,
        theta_start=theta0.to(dtype),
        theta_target=target.to(dtype),
        images=images.to(dtype),
        labels=labels.to(dtype),
        labels_learnable=True,
        batches=[torch.randperm(N_IMAGES, generator=gen)[:BATCH] for _ in range(steps)],
        augment=step_augment,
        syn_lr=torch.tensor(beta, dtype=dtype),
    )


def top_hessian_eigenvalue(problem: MatchingProblem, iterations: int = 100) -> float:
    """Largest |eigenvalue| of the first inner loss's Hessian at theta_0 (power iteration)."""
    _, images, labels = problem.step_inputs(0)
    theta = problem.theta_start.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(problem.step_loss(theta, images, labels, 0), theta, create_graph=True)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    value = 0.0
    for _ in range(iterations):
        v = v / v.norm()
        (hv,) = torch.autograd.grad(g, theta, v, retain_graph=True)
        value = float(torch.dot(v, hv))
        v = hv
    return abs(value)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of ``a`` against the reference ``b``."""
    return float((a - b).norm() / b.norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened tensors."""
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)))


def agreement_table(steps: list[int], beta: float) -> str:
    """Markdown table of each engine's relative error against ``unrolled``."""
    rows = [
        "| engine | dtype | T | images | label logits | step size | loss | cos(images) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    others = [n for n in ENGINES.names() if n != "unrolled"]
    for name in others:
        for dtype, dname in ((torch.float64, "float64"), (torch.float32, "float32")):
            for t in steps:
                problem = make_problem(t, dtype, beta)
                ref = ENGINES.get("unrolled")(problem)
                out = ENGINES.get(name)(problem)
                rows.append(
                    f"| {name} | {dname} | {t} | {rel(out.images, ref.images):.1e} | "
                    f"{rel(out.labels, ref.labels):.1e} | {rel(out.syn_lr, ref.syn_lr):.1e} | "
                    f"{rel(out.loss, ref.loss):.1e} | {cosine(out.images, ref.images):.4f} |"
                )
    return "\n".join(rows)


def tesla_sweep_table(steps: int, betas: list[float], lam: float) -> str:
    """Markdown table of TESLA's error against ``unrolled`` (float64) at fixed T over step sizes."""
    rows = [
        "| beta | beta x top eigenvalue | images | label logits | step size | cos(images) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for beta in betas:
        problem = make_problem(steps, torch.float64, beta)
        ref, out = ENGINES.get("unrolled")(problem), ENGINES.get("tesla")(problem)
        rows.append(
            f"| {beta:g} | {beta * lam:.2f} | {rel(out.images, ref.images):.1e} | "
            f"{rel(out.labels, ref.labels):.1e} | {rel(out.syn_lr, ref.syn_lr):.1e} | "
            f"{cosine(out.images, ref.images):.4f} |"
        )
    return "\n".join(rows)


def memory_table(steps: list[int], beta: float) -> str:
    """Markdown table of saved-tensor peak bytes (float32) per engine and T."""
    header = "| engine | exact | " + " | ".join(f"T={t}" for t in steps) + " |"
    rows = [header, "|---|---|" + "---:|" * len(steps)]
    for name in ENGINES.names():
        engine = ENGINES.get(name)
        cells = []
        for t in steps:
            problem = make_problem(t, torch.float32, beta)
            with SavedTensorMeter() as meter:
                out = engine(problem)
            cell = f"{meter.peak_bytes:,}"
            if out.snapshot_bytes:
                cell += f" + {out.snapshot_bytes:,} snap."
            cells.append(cell)
        rows.append(f"| {name} | {'yes' if engine.exact else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    """Parse arguments and print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1,5,10,20", help="inner steps T for the agreement table")
    parser.add_argument("--memory-steps", default="1,2,4,8,16", help="inner steps T for the memory table")
    parser.add_argument(
        "--beta",
        type=float,
        default=0.03,
        help="student step size (syn_lr); 0.03 gives beta x top eigenvalue ~ 0.5",
    )
    parser.add_argument("--sweep-steps", type=int, default=10, help="T for the TESLA step-size sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = [int(s) for s in args.steps.split(",")]
    memory_steps = [int(s) for s in args.memory_steps.split(",")]

    prov = provenance("cpu")
    print("# Trajectory-matching engines: gradient agreement and saved-tensor memory\n")
    print(
        f"Command: `python benchmarks/engine_agreement.py` ; device: {prov['device']} ; threads: {prov['threads']} ; "
        f"versions: {prov['versions']} ; git {prov['git_revision']}\n"
    )
    probe = make_problem(1, torch.float64, args.beta)
    params = probe.theta_start.numel()
    lam = top_hessian_eigenvalue(probe)
    print(
        f"Small ConvNet (1x6x6, width 8, GroupNorm, Softplus, {N_CLASSES} classes, P = {params}), "
        f"{N_IMAGES} synthetic images, batches of {BATCH}, learnable label logits, per-step augmentation; "
        f"beta = {args.beta}, beta x top Hessian eigenvalue at theta_0 = {args.beta * lam:.2f}.\n"
    )
    print("Relative error against `unrolled` (||g - g_unrolled|| / ||g_unrolled||):\n")
    print(agreement_table(steps, args.beta))
    print(f"\nTESLA against `unrolled` at T = {args.sweep_steps} (float64) as the step size grows:\n")
    betas = [round(c / lam, 4) for c in (0.1, 0.25, 0.5, 1.0, 2.0)]
    print(tesla_sweep_table(args.sweep_steps, betas, lam))
    print("\nPeak bytes of autograd saved tensors during one engine call (float32; + parameter snapshots):\n")
    print(memory_table(memory_steps, args.beta))


if __name__ == "__main__":
    main()
