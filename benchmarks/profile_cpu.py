"""The committed CPU profile: linear (MTT) vs constant (TESLA, TESLA-exact) memory in saved-tensor terms.

A 2-core CPU cannot run the paper's sizes (CIFAR-100 shapes at batch 100 and up to 100 steps: see
``benchmarks/profile_gpu.sh``), so this runs the same methods and code at a size it affords in a few
minutes, each point in a fresh process, one torch thread:

- steps sweep (Table 4, Figure 2): CIFAR-100 shapes (3x32x32, 100 classes, ConvNet-3), ipc 1,
  batch_syn 10, steps 1, 5, 10, 20, 40, 2 measured iterations after 1 warm-up;
- shapes (Table 5, Figure 3): the ImageNet-1K shape (3x64x64, 1000 classes, ConvNet-4) at 10 steps,
  ipc 1, batch_syn 10, 1 measured iteration after 1 warm-up, beside the CIFAR-100 10-step points.

Each method keeps the label rule of its config card for the dataset (hard labels on CIFAR-100; TESLA
and TESLA-exact use soft labels, SLA, on ImageNet-1K, whose teacher forward over the whole synthetic set
shows in their time and RSS there).

Data and experts are random stand-ins (memory and time do not depend on pixel values). On CPU the
memory measures are autograd's saved tensors (deterministic), the adjoint engine's parameter
snapshots, and each process's peak RSS. It writes ``profile.csv``, ``profile.md``, the figures,
``provenance.json`` and ``targets.md`` into ``--output`` and prints whether the targets hold:

- MTT's saved-tensor peak grows linearly with the steps (least-squares fit, R^2 >= 0.99);
- TESLA's and TESLA-exact's peaks at the largest steps are within 5% of their own 1-step peak
  (TESLA-exact reported with and without its parameter snapshots).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/profile_cpu.py [--output reports/profile-cpu] [--quick]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from dcbench_tesla.files import write_text_atomic
from dcbench_tesla.profiling.point import PointSpec
from dcbench_tesla.profiling.sweep import plan_points, run_sweep

METHODS = ("mtt", "tesla", "tesla-exact")
TOLERANCE = 0.05


def points(quick: bool) -> list[PointSpec]:
    """The steps sweep on the CIFAR-100 shape plus the ImageNet-1K shape at 10 steps."""
    steps = (1, 2, 4) if quick else (1, 5, 10, 20, 40)
    common = {"batch_syn": 10, "ipc": 1, "device": "cpu", "threads": 1, "seed": 0}
    sweep = plan_points(METHODS, ["cifar100"], steps, iterations=2, warmup=1, **common)
    if quick:
        return sweep
    return sweep + plan_points(METHODS, ["imagenet64"], [10], iterations=1, warmup=1, **common)


def _linear_fit(x: pd.Series, y: pd.Series) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of a least-squares line."""
    mx, my = x.mean(), y.mean()
    slope = ((x - mx) * (y - my)).sum() / ((x - mx) ** 2).sum()
    intercept = my - slope * mx
    residual = ((y - (slope * x + intercept)) ** 2).sum()
    total = ((y - my) ** 2).sum()
    return float(slope), float(intercept), float(1 - residual / total) if total else 1.0


def targets(frame: pd.DataFrame, dataset: str = "cifar100") -> list[str]:
    """Lines saying whether each target holds on this CPU sweep (saved-tensor terms)."""
    rows = frame[(frame["dataset"] == dataset) & (frame["status"] == "ok")]
    lines = [f"# Targets on CPU ({dataset} shape, saved-tensor terms)", ""]
    mtt = rows[rows["method"] == "mtt"].sort_values("steps")
    if len(mtt) >= 3:
        slope, intercept, r2 = _linear_fit(mtt["steps"].astype(float), mtt["peak_saved_tensors_mib"])
        holds = r2 >= 0.99 and slope > 0
        lines.append(
            f"- mtt grows linearly: {'HOLDS' if holds else 'DOES NOT HOLD'}: saved tensors "
            f"= {intercept:.1f} + {slope:.2f} x steps MiB, R^2 = {r2:.5f} "
            f"({mtt['peak_saved_tensors_mib'].iloc[0]:.1f} MiB at {int(mtt['steps'].iloc[0])} steps, "
            f"{mtt['peak_saved_tensors_mib'].iloc[-1]:.1f} MiB at {int(mtt['steps'].iloc[-1])})"
        )
    for method, column, what in (
        ("tesla", "peak_saved_tensors_mib", "saved tensors"),
        ("tesla-exact", "peak_saved_tensors_mib", "saved tensors only (snapshots EXCLUDED)"),
        ("tesla-exact", "peak_saved_plus_snapshots_mib", "saved tensors + parameter snapshots (INCLUDED)"),
    ):
        part = rows[rows["method"] == method].sort_values("steps")
        if len(part) < 2 or int(part["steps"].iloc[0]) != 1:
            continue
        first, last = part[column].iloc[0], part[column].iloc[-1]
        change = last / first - 1
        holds = abs(change) <= TOLERANCE
        lines.append(
            f"- {method}, {what}: {'HOLDS' if holds else 'DOES NOT HOLD'}: {first:.2f} MiB at 1 step, "
            f"{last:.2f} MiB at {int(part['steps'].iloc[-1])} steps ({change:+.1%}; target within "
            f"{TOLERANCE:.0%})"
        )
    rss = rows.pivot_table(index="steps", columns="method", values="peak_rss_mib")
    if not rss.empty:
        lines += ["", "Peak RSS of each point process (MiB; imports and data included):", ""]
        lines.append(rss.round(1).to_markdown() if _has_tabulate() else rss.round(1).to_string())
    return lines


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    """Run the CPU sweep, write the reports and print the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("reports/profile-cpu"))
    parser.add_argument("--quick", action="store_true", help="steps 1,2,4 on the CIFAR-100 shape only")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    plan = points(args.quick)
    settings = {
        "benchmark": "benchmarks/profile_cpu.py",
        "methods": list(METHODS),
        "steps_sweep": {
            "dataset": "cifar100",
            "steps": sorted({p.steps for p in plan if p.dataset == "cifar100"}),
            "iterations": 2,
            "warmup": 1,
        },
        "shapes": {"dataset": "imagenet64", "steps": [10], "iterations": 1, "warmup": 1} if not args.quick else None,
        "batch_syn": 10,
        "ipc": 1,
        "threads": 1,
        "device": "cpu",
    }
    print(f"{len(plan)} points, each in a fresh process -> {args.output}")
    frame = run_sweep(plan, args.output, command=command, settings=settings, table_steps=None if args.quick else 10)
    lines = targets(frame)
    text = "\n".join(lines) + "\n"
    write_text_atomic(args.output / "targets.md", text)
    print()
    print(text)


if __name__ == "__main__":
    main()
