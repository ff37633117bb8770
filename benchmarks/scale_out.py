"""Local vs Ray wall time on this machine: a 4-cell digits bench, 4 digits experts, and Ray's overhead per task.

Runs, in this order, in one driver process with one torch thread per task:

1. the bench (``random,dm`` x IPC ``1,2`` on digits) and the experts (4 ConvNet experts) with the
   local executor (one task after another, in this process);
2. ``ray.init`` of a local Ray instance with ``--workers`` CPUs (the start-up cost, timed alone);
3. the same bench and experts through Ray (the first bench meets cold workers: their imports of
   torch and dcbench are in its time; the same bench again into another directory on warm workers),
   then the experts on warm workers;
4. Ray's per-task overhead: the first no-op task after start-up, and many no-op tasks through the
   executor on warm workers;

checks that the Ray results equal the local ones (``results.csv`` and the expert trajectories,
bitwise), and writes ``reports/scale-out.md`` with the command, versions, threads, CPU count, nice
level and the machine's load average (``os.getloadavg``) before and after every phase.

Usage::

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/scale_out.py [--output reports/scale-out.md] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dcbench_tesla.data import load_dataset
from dcbench_tesla.executors import Task, open_executor
from dcbench_tesla.experts import ExpertConfig, ExpertStore, train_experts
from dcbench_tesla.files import write_text_atomic
from dcbench_tesla.run.bench import run_bench

BENCH = {"methods": ["random", "dm"], "ipcs": [1, 2]}


def noop() -> None:
    """A task that does nothing: what remains of its wall time is the executor's overhead."""


def settings(quick: bool) -> dict[str, Any]:
    """Bench and expert sizes (``--quick``: a smoke run of the script itself)."""
    if quick:
        return {"iterations": 2, "num_eval": 1, "eval_epochs": 2, "experts": 4, "expert_epochs": 1, "overhead": 20}
    return {"iterations": 20, "num_eval": 2, "eval_epochs": 20, "experts": 4, "expert_epochs": 3, "overhead": 100}


def timed(label: str, fn: Callable[[], Any], log: list[dict[str, Any]]) -> Any:
    """Run ``fn``, recording its wall time and the load average before and after."""
    before = os.getloadavg()
    start = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - start
    log.append({"phase": label, "wall_s": wall, "load_before": before, "load_after": os.getloadavg()})
    print(f"{label}: {wall:.1f} s (load {before[0]:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    return value


def run_all(work: Path, size: dict[str, Any], workers: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every phase; returns the timings and the equality checks."""
    import ray

    torch.set_num_threads(1)
    digits = load_dataset("digits")
    expert_config = ExpertConfig(
        dataset="digits", model="convnet", num_experts=size["experts"], epochs=size["expert_epochs"], batch_size=32
    )
    bench = {
        "num_eval_models": size["num_eval"],
        "eval_epochs": size["eval_epochs"],
        "iterations": size["iterations"],
        "threads": 1,
        "progress": False,
    }
    quiet = {"progress": False, "notice": lambda _line: None}
    log: list[dict[str, Any]] = []

    def bench_into(name: str) -> Callable[[], Any]:
        return lambda: run_bench(BENCH["methods"], "digits", BENCH["ipcs"], None, work / name, **bench)

    def experts_into(name: str) -> Callable[[], Any]:
        return lambda: train_experts(digits, expert_config, work / name, "cpu", **quiet)

    timed("local: 4-cell bench", bench_into("bench-local"), log)
    timed("local: 4 experts", experts_into("experts-local"), log)
    timed(
        f"ray: start a local instance ({workers} CPUs)",
        lambda: ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False),
        log,
    )
    with open_executor("ray", threads=1) as executor:
        timed("ray: first no-op task after start-up", lambda: list(executor.map([Task("first", noop)])), log)
        timed("ray: 4-cell bench (cold workers)", bench_into("bench-ray"), log)
        timed("ray: the same 4-cell bench again (warm workers)", bench_into("bench-ray-warm"), log)
        timed("ray: 4 experts (warm workers)", experts_into("experts-ray"), log)
        tasks = [Task(f"noop-{i}", noop) for i in range(size["overhead"])]
        timed(f"ray: {size['overhead']} no-op tasks (warm workers)", lambda: list(executor.map(tasks)), log)
    ray.shutdown()

    local_experts, ray_experts = ExpertStore.open(work / "experts-local"), ExpertStore.open(work / "experts-ray")
    checks = {
        "results.csv identical": pd.read_csv(work / "bench-local" / "results.csv")
        .drop(columns=["run_dir"], errors="ignore")
        .equals(pd.read_csv(work / "bench-ray" / "results.csv").drop(columns=["run_dir"], errors="ignore")),
        "expert trajectories bitwise equal": all(
            torch.equal(local_experts.trajectory(i), ray_experts.trajectory(i)) for i in range(size["experts"])
        ),
    }
    return log, checks


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def report(log: list[dict[str, Any]], checks: dict[str, Any], size: dict[str, Any], workers: int) -> str:
    """The Markdown report."""
    walls = {row["phase"]: row["wall_s"] for row in log}

    def wall(prefix: str) -> float:
        return next(v for k, v in walls.items() if k.startswith(prefix))

    noop_rows = [k for k in walls if "no-op tasks" in k]
    load = log[0]["load_before"][0]
    shared = " (other work was running: every wall time here is inflated and noisy)" if load > 0.5 else ""
    per_task_ms = 1000 * walls[noop_rows[0]] / size["overhead"] if noop_rows else float("nan")
    lines = [
        "# Scale-out: local vs Ray on this machine",
        "",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
        f"- versions: python {platform.python_version()}, dcbench-tesla {_version('dcbench-tesla')}, "
        f"torch {torch.__version__}, ray {_version('ray')}",
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU; "
        f"nice {os.nice(0)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"- threads: 1 torch thread in the local driver and in every Ray task; Ray started with {workers} CPUs, "
        "each task asking for 1 CPU, so 2 tasks run at a time",
        f"- bench: {','.join(BENCH['methods'])} x IPC {','.join(map(str, BENCH['ipcs']))} on digits, "
        f"{size['iterations']} iterations, {size['num_eval']} evaluation models x {size['eval_epochs']} epochs "
        "(plus the random real subset beside dm)",
        f"- experts: {size['experts']} ConvNet experts on digits, {size['expert_epochs']} epochs, batch 32",
        "",
        "| phase | wall (s) | load average before -> after (1 min) |",
        "|---|---:|---|",
    ]
    for row in log:
        lines.append(
            f"| {row['phase']} | {row['wall_s']:.1f} | {row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f} |"
        )
    lines += [
        "",
        f"- bench speed-up (local / ray, Ray start-up excluded): {wall('local: 4-cell') / wall('ray: 4-cell'):.2f}x "
        f"with cold workers, {wall('local: 4-cell') / wall('ray: the same 4-cell'):.2f}x with warm ones",
        f"- experts speed-up (local / ray): {wall('local: 4 experts') / wall('ray: 4 experts'):.2f}x",
        f"- Ray overhead per task on warm workers (submit, schedule, run a no-op, return): {per_task_ms:.1f} ms",
        f"- Ray start-up: {wall('ray: start'):.1f} s for ray.init, then {wall('ray: first no-op'):.1f} s for the first "
        "task; a cold worker also imports torch and dcbench on its first real task (inside the bench's time)",
        "- same results: " + ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()),
        "",
        "## What this machine can and cannot show",
        "",
        f"- Shared: the 1-minute load average was {load:.2f} before the first phase on {os.cpu_count()} CPUs{shared}; "
        "the driver ran under the nice level above, so other users' processes came first.",
        "- It can show that the results through Ray are the same as local ones, and Ray's fixed costs: "
        "start-up, a cold worker's imports, the per-task overhead on warm workers.",
        "- It cannot show scaling: with 2 cores at most 2 one-thread tasks run at a time, so the best possible "
        "speed-up is 2x, less the longest cell (the dm cells take longer than the random ones), less Ray's costs, "
        "less whatever the other processes took. A local run with one thread leaves the second core idle only "
        "when the machine is otherwise quiet; with a load average above the CPU count and this run at a lower "
        "priority, the two Ray workers probably got little more CPU than the local run's one process did.",
        "- It cannot show a cluster: no second node (object transfers between nodes, the shared filesystem's "
        "latency for the bench directory and $DCBENCH_CACHE), and no GPU (num_gpus placement, fractional "
        "evaluation GPUs). Neither was run here: the GPU request is exercised only by the test in which this "
        "CPU-only Ray instance refuses a task that asks for a GPU.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("reports/scale-out.md"))
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance [2].")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: check the script runs.")
    args = parser.parse_args(argv)
    size = settings(args.quick)
    with tempfile.TemporaryDirectory(prefix="dcbench-scale-out-") as tmp:
        os.environ["DCBENCH_CACHE"] = str(Path(tmp) / "cache")
        log, checks = run_all(Path(tmp), size, args.workers)
    text = report(log, checks, size, args.workers)
    write_text_atomic(args.output, text)
    print(f"wrote {args.output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
