"""Evaluation models trained together (one ``vmap`` pass) vs one after another: the ratio per step size.

For each IPC of digits (a random real subset: 10 x IPC images, one SGD step per epoch at batch 256),
trains the protocol's K models both ways, interleaved (together, alone, together, ...) for
``--rounds`` rounds, and reports the median ratio alone / together with its min-max spread, and the
largest accuracy difference between the two ways (the models are the same to round-off). The
bound :data:`dcbench_tesla.evaluation.TOGETHER_MAX_STEP_IMAGES` comes from this table.
Writes ``reports/batched-evaluation.md`` with the command, torch version, threads, CPU count and
the load average before and after.

Usage::

    python benchmarks/batched_evaluation.py [--threads 1,2] [--epochs 60] [--rounds 3] [--ipcs 1,2,3,5,10]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from dcbench_tesla.data import load_dataset
from dcbench_tesla.evaluation import TOGETHER_MAX_STEP_IMAGES, _model_seed, random_real_subset, train_models
from dcbench_tesla.files import write_text_atomic
from dcbench_tesla.protocols import protocol_for


def measure(ipc: int, epochs: int, rounds: int, threads: int) -> dict[str, float]:
    """Both ways for one IPC at ``threads`` torch threads, interleaved: wall times and largest accuracy difference."""
    torch.set_num_threads(threads)
    digits = load_dataset("digits")
    protocol = protocol_for("digits", epochs=epochs)
    images, labels = random_real_subset(digits, ipc, seed=0)
    seeds = [_model_seed(0, k) for k in range(protocol.num_models)]
    for together in (True, False):  # warm-up, not timed: first calls pay one-off set-up costs
        train_models(
            "convnet", images, labels, digits, 0.01, protocol.replace(epochs=1), seeds, "cpu", together=together
        )
    walls: dict[bool, list[float]] = {True: [], False: []}
    accuracies: dict[bool, list[float]] = {}
    for _ in range(rounds):
        for together in (True, False):
            start = time.perf_counter()
            accuracies[together] = train_models(
                "convnet", images, labels, digits, 0.01, protocol, seeds, "cpu", together=together
            )
            walls[together].append(time.perf_counter() - start)
    ratios = [alone / together for alone, together in zip(walls[False], walls[True], strict=True)]
    return {
        "threads": threads,
        "ipc": ipc,
        "step_images": min(images.shape[0], protocol.batch_size),
        "alone_s": statistics.median(walls[False]),
        "together_s": statistics.median(walls[True]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "max_acc_diff": max(abs(a - b) for a, b in zip(accuracies[True], accuracies[False], strict=True)),
        "models": protocol.num_models,
    }


def report(rows: list[dict[str, float]], args: argparse.Namespace, load: tuple[float, float]) -> str:
    """The Markdown report."""
    lines = [
        "# Evaluation models trained together (vmap) vs one after another",
        "",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after.",
        f"Digits, ConvNet, {rows[0]['models']} models x {args.epochs} epochs each way, {args.rounds} interleaved "
        "rounds; ratio = one-after-another wall / together wall (median, min-max over the rounds).",
        f"The harness trains together up to {TOGETHER_MAX_STEP_IMAGES} images per step.",
        "",
        "| torch threads | IPC | images per step | one after another (s) | together (s) | ratio (min-max) "
        "| max accuracy diff |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['threads']} | {row['ipc']} | {row['step_images']} | "
            f"{row['alone_s']:.2f} | {row['together_s']:.2f} | "
            f"{row['ratio']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | "
            f"{100 * row['max_acc_diff']:.2f} pts |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure every IPC and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts, e.g. 1,2")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ipcs", default="1,2,3,5,10")
    parser.add_argument("--output", default="reports/batched-evaluation.md")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    rows = []
    for threads in (int(v) for v in args.threads.split(",")):
        for ipc in (int(v) for v in args.ipcs.split(",")):
            rows.append(measure(ipc, args.epochs, args.rounds, threads))
        print(rows[-1], flush=True)
    text = report(rows, args, (before, os.getloadavg()[0]))
    write_text_atomic(Path(args.output), text)
    print(text)


if __name__ == "__main__":
    main()
