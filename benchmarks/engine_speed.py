"""Engine speed on one CPU thread, today's code beside the issue's starting commit -> reports/engine-speed.md.

For the digits shape (1x8x8, ConvNet depth 2) and the CIFAR shape (3x32x32, ConvNet-3), 100
synthetic images (ipc 10), batch 10 and 100, T in {10, 20}, with DSA augmentation:

1. building blocks per FlatParams forward path (forward, forward+backward, and the second-order
   step: forward + create_graph backward + double backward w.r.t. the images, or w.r.t. the
   parameters and the images);
2. one outer iteration (the engine call) of ``unrolled`` (MTT), ``tesla`` and ``adjoint``
   (tesla-exact) for today's code and for the baseline commit, each in its own persistent worker
   process (benchmarks/engine_speed_worker.py), rounds interleaved between the two workers,
   medians of >= 5 rounds with their min-max spread; the within-version ratios and the bounds that
   the measured building blocks give them;
3. the per-step expert read of a 51-epoch CIFAR-100-shaped store (P = 504,420): the whole-trajectory
   read of the baseline against today's three rows, from the page cache and cold
   (``posix_fadvise(DONTNEED)`` on the file before each read).

Times are process CPU seconds (one torch thread; page-fault time included) unless marked wall.

Usage::

    python benchmarks/engine_speed.py            # full run (about 1.5-2 hours on the 2-core CI machine)
    python benchmarks/engine_speed.py --quick    # a few minutes: digits + CIFAR batch 10, T = 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "engine_speed_worker.py"
ENGINES = ("unrolled", "tesla", "adjoint")
LABEL = {"unrolled": "mtt", "tesla": "tesla", "adjoint": "adjoint"}


class Worker:
    """A persistent worker process running one code version."""

    def __init__(self, name: str, pythonpath: Path, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.update(extra_env or {})
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=str(pythonpath),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self._read()
        if not str(self.hello.get("package", "")).startswith(str(pythonpath)):
            raise RuntimeError(f"worker {name} imported {self.hello.get('package')}, not the code in {pythonpath}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (exit code {self.proc.poll()})")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send a command, return the reply (raises on a worker error)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply and cmd["cmd"] != "blocks":
            raise RuntimeError(f"worker {self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        """Ask the worker to quit and wait for it."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # no reply
            self.proc.stdin.flush()
        finally:
            self.proc.wait(timeout=60)


def extract(revision: str, into: Path) -> Path:
    """``git archive revision`` extracted into ``into`` (the baseline's package tree)."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), revision], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def med(values: list[float]) -> float:
    """Median."""
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """``median [min-max]`` with 3 significant digits."""
    return f"{med(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def rel_diff(a: list[float], b: list[float]) -> float:
    """Relative L2 difference of two sampled gradient vectors."""
    num = sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5
    den = sum(y * y for y in b) ** 0.5 or 1.0
    return num / den


def run_config(workers: dict[str, Worker], shape: str, batch: int, steps: int, rounds: int, reps: int) -> dict:
    """Interleaved engine timings, building blocks and cross-version agreement of one configuration."""
    for w in workers.values():
        w.ask(cmd="setup", shape=shape, batch=batch, steps=steps)
    result: dict[str, Any] = {"shape": shape, "batch": batch, "steps": steps, "times": {}, "agreement": {}}
    first: dict[tuple[str, str], dict] = {}
    for name in ENGINES:  # warm-up (and the gradients compared across versions)
        for version, w in workers.items():
            first[(version, name)] = w.ask(cmd="engine", name=name)
    if "baseline" in workers:
        for name in ENGINES:
            new, old = first[("today", name)], first[("baseline", name)]
            result["agreement"][name] = {
                "images": rel_diff(new["images"], old["images"]),
                "syn_lr": abs(new["syn_lr"] - old["syn_lr"]) / (abs(old["syn_lr"]) or 1.0),
                "loss": abs(new["loss"] - old["loss"]) / (abs(old["loss"]) or 1.0),
            }
    rss: dict[str, float] = {}
    times: dict[str, dict[str, list[float]]] = {v: {e: [] for e in ENGINES} for v in workers}
    walls: dict[str, dict[str, list[float]]] = {v: {e: [] for e in ENGINES} for v in workers}
    order = list(workers)
    for r in range(rounds):
        versions = order if r % 2 == 0 else order[::-1]
        for name in ENGINES:
            for version in versions:
                out = workers[version].ask(cmd="engine", name=name)
                times[version][name].append(out["cpu_s"])
                rss[version] = out["peak_rss_mib"]
                walls[version][name].append(out["wall_s"])
        print(f"  {shape} b{batch} T{steps} round {r + 1}/{rounds}", flush=True)
    result["times"], result["walls"] = times, walls
    blocks: dict[str, dict[str, Any]] = {}
    for version, w in workers.items():
        for mode in ("fused", "functional", "module") if version == "today" else ("module",):
            out = w.ask(cmd="blocks", mode=mode, reps=reps)
            if "error" not in out:
                blocks[f"{version}/{mode}"] = out
    result["blocks"] = blocks
    if "today" in workers:
        result["draw_s"] = workers["today"].ask(cmd="draw", reps=200)["draw_s"]
    result["peak_rss_mib"] = rss
    return result


def predicted(blocks: dict[str, Any], steps: int, reuse: bool) -> dict[str, float]:
    """Operation-count predictions of one outer iteration from measured building blocks."""
    fb, s_x, s = (med(blocks[k]) for k in ("FB", "FB2DB_X", "FB2DB_thetaX"))
    first = (steps - 1 if reuse else steps) * fb  # the first-order forward loop
    return {"unrolled": steps * s, "tesla": first + steps * s_x, "adjoint": first + steps * s}


def expert_read(num_experts: int, picks: int, directory: Path) -> dict[str, Any]:
    """Per-step expert read, whole trajectory (baseline) against rows (today), warm and cold."""
    import torch

    from dcbench_tesla.experts import ExpertStore
    from dcbench_tesla.profiling.standins import write_standin_experts

    torch.set_num_threads(1)
    start = time.perf_counter()
    store = write_standin_experts(directory, "convnet3", "cifar100", epochs=50, num_experts=num_experts)
    write_s = time.perf_counter() - start
    files = [store.expert_path(i) for i in range(store.num_experts)]
    size = sum(f.stat().st_size for f in files)
    rng = random.Random(0)
    draws = [(rng.randrange(num_experts), rng.randrange(20)) for _ in range(picks)]

    def drop_cache() -> None:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def whole(i: int, s: int, cached: ExpertStore) -> None:
        traj = cached.trajectory(i)  # the baseline's _segment: a whole expert (1 GiB LRU), three rows used
        traj[s].clone(), traj[s + 3].clone(), traj[-1].clone()

    def rows(i: int, s: int, _: ExpertStore) -> None:
        store.rows(i, [s, s + 3, 50])

    out: dict[str, Any] = {
        "num_experts": num_experts,
        "epochs": 50,
        "num_params": store.num_params,
        "store_bytes": size,
        "write_s": write_s,
        "picks": picks,
    }
    for label, fn in (("whole", whole), ("rows", rows)):
        for temperature in ("warm", "cold"):
            cached = ExpertStore.open(directory)  # a fresh 1 GiB LRU, as a new run has
            if temperature == "warm":
                for f in files:  # page cache holds the store
                    f.read_bytes()
            walls, cpus = [], []
            for i, s in draws:
                if temperature == "cold":
                    drop_cache()
                w0, c0 = time.perf_counter(), time.process_time()
                fn(i, s, cached)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            out[f"{label}_{temperature}_wall_s"] = walls
            out[f"{label}_{temperature}_cpu_s"] = cpus
    drop_cache()
    return out


def snapshot_memory(steps_list: list[int], batch: int) -> list[dict[str, Any]]:
    """Saved-tensor peak and snapshot bytes of tesla and of adjoint under each policy (CIFAR-100 shape).

    Deterministic byte counts (they depend on shapes only); the CPU seconds of the single call are
    indicative. Runs in this process with today's code.
    """
    import torch

    from dcbench_tesla.data.augment import DSA
    from dcbench_tesla.matching import ENGINES, SNAPSHOT_POLICIES, MatchingProblem
    from dcbench_tesla.models import build_model
    from dcbench_tesla.models.flat import FlatParams
    from dcbench_tesla.profiling.saved_tensors import SavedTensorMeter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    flat = FlatParams(build_model("convnet3", channels=3, num_classes=100, image_size=32))
    gen = torch.Generator().manual_seed(1)
    theta0 = flat.flatten()
    images = torch.randn(100, 3, 32, 32, generator=gen)
    dsa = DSA()
    rows = []
    for steps in steps_list:
        batches = [torch.randperm(100, generator=gen)[:batch] for _ in range(steps)]
        for name, policy in [("tesla", "device")] + [("adjoint", p) for p in SNAPSHOT_POLICIES]:
            problem = MatchingProblem(
                forward=flat.forward,
                theta_start=theta0,
                theta_target=theta0 + 0.01 * theta0.abs().mean(),
                images=images,
                labels=torch.arange(100),
                batches=batches,
                syn_lr=torch.tensor(0.01),
                augment=lambda x, i: dsa(x, seed=1000 + i),
                snapshot_policy=policy,
            )
            with SavedTensorMeter() as meter:
                start = time.process_time()
                out = ENGINES.get(name)(problem)
                cpu = time.process_time() - start
            rows.append(
                {
                    "steps": steps,
                    "engine": name,
                    "policy": policy if name == "adjoint" else "",
                    "saved_mib": meter.peak_bytes / 2**20,
                    "snapshot_mib": out.snapshot_bytes / 2**20,
                    "host_mib": out.host_snapshot_bytes / 2**20,
                    "recomputed_steps": out.recomputed_steps,
                    "cpu_s": cpu,
                }
            )
            print(f"  snapshot memory T={steps} {name} {policy}: {rows[-1]}", flush=True)
    return rows


def report(results: list[dict], store: dict | None, meta: dict, memory: list[dict] | None = None) -> str:
    """The Markdown report."""
    lines = ["# Engine speed: one outer iteration on one CPU thread, today vs the starting commit", ""]
    lines += [
        f"Command: `{meta['command']}`  ",
        f"Today: `{meta['today_rev']}`; baseline: `{meta['baseline']}` (from `git archive`, its own worker process).  ",
        f"torch {meta['torch']} ; device: {meta['device']} ; torch threads: 1 (OMP_NUM_THREADS=1) ; "
        f"Python {meta['python']} ; {meta['cpu']} ({os.cpu_count()} cores, shared)  ",
        f"Load average (1, 5, 15 min) before: {meta['load_before']} ; after: {meta['load_after']} ; "
        f"wall time of the run: {meta['run_s'] / 60:.1f} min  ",
        *([meta["rebuilt"] + "  "] if meta.get("rebuilt") else []),
        *([meta["kept"] + "; the revision that measured each row is in the JSON  "] if meta.get("kept") else []),
        "Extra environment of both workers: "
        + (", ".join(f"`{k}={v}`" for k, v in meta["env"].items()) if meta["env"] else "none"),
        "",
        "Times are process CPU seconds of the engine call (loop 1 + gradient pass; page-fault time included), "
        "medians over interleaved rounds with [min-max]. Problem: 100 synthetic images (ipc 10, 10 classes), "
        "hard labels, DSA (all families, one seed per step), syn_lr 0.01, float32; the same seeds in both "
        "versions. `mtt` = `unrolled`, `adjoint` = tesla-exact's engine (`device` snapshots).",
        "",
        "## One outer iteration",
        "",
        "| shape | batch | T | engine | baseline s | today s | speed-up (per-round baseline/today) | today = |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        for name in ENGINES:
            new = r["times"]["today"][name]
            old = r["times"].get("baseline", {}).get(name)
            speed = spread([o / n for o, n in zip(old, new, strict=True)]) if old else "n/a"
            lines.append(
                f"| {r['shape']} | {r['batch']} | {r['steps']} | {LABEL[name]} | {spread(old) if old else 'n/a'} | "
                f"{spread(new)} | {speed} | `{r.get('today_rev', meta['today_rev'])}` |"
            )
    lines += [
        "",
        "## Ratios within each version, and the bound from the operation count",
        "",
        "Measured ratio: per-round ratio of the two engines in the same worker, median [min-max]. Bound: the "
        "same ratio predicted from the measured building blocks (F+B = forward + backward; S = forward + "
        "create_graph backward + double backward w.r.t. parameters and images; S_X = the same w.r.t. images "
        "only): mtt = T S; tesla = (T-1) (F+B) + T S_X; adjoint = (T-1) (F+B) + T S (today: the shared step "
        "is reused; baseline: T (F+B) instead of (T-1) (F+B)).",
        "",
        "| shape | batch | T | version | tesla/mtt | bound | adjoint/mtt | bound | adjoint/tesla | bound |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for version in r["times"]:
            t = r["times"][version]
            key = f"{version}/fused" if version == "today" else "baseline/module"
            pred = predicted(r["blocks"][key], r["steps"], reuse=version == "today") if key in r["blocks"] else None
            cells = []
            for a, b in (("tesla", "unrolled"), ("adjoint", "unrolled"), ("adjoint", "tesla")):
                cells.append(spread([x / y for x, y in zip(t[a], t[b], strict=True)]))
                cells.append(f"{pred[a] / pred[b]:.2f}" if pred else "n/a")
            lines.append(f"| {r['shape']} | {r['batch']} | {r['steps']} | {version} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Building blocks (CPU s per call, median [min-max])",
        "",
        "`module` = `torch.func.functional_call` (the baseline's only path), `functional` = the ConvNet's "
        "hand-written functional forward with stock ops, `fused` = with the fused instance norm + ReLU "
        "(hand-derived double backward) and the strided 2x2 pool. Measured once per shape and batch (T does "
        "not change them).",
        "",
        "| shape | batch | path | F | F+B | S_X (2nd order, images) | S (2nd order, params + images) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    seen = set()
    for r in results:
        if (r["shape"], r["batch"]) in seen:
            continue
        seen.add((r["shape"], r["batch"]))
        for key, b in r["blocks"].items():
            lines.append(
                f"| {r['shape']} | {r['batch']} | {key} | {spread(b['F'])} | {spread(b['FB'])} | "
                f"{spread(b['FB2DB_X'])} | {spread(b['FB2DB_thetaX'])} |"
            )
    lines += ["", "## Same answers", ""]
    lines.append(
        "Relative difference between today's and the baseline's results on the same problem (float32; the "
        "fused ops and the reordered TESLA replay change round-off only):"
    )
    lines += ["", "| shape | batch | T | engine | images (sampled) | syn_lr | loss |"]
    lines += ["|---|---:|---:|---|---:|---:|---:|"]
    for r in results:
        for name, a in r["agreement"].items():
            lines.append(
                f"| {r['shape']} | {r['batch']} | {r['steps']} | {LABEL[name]} | {a['images']:.1e} | "
                f"{a['syn_lr']:.1e} | {a['loss']:.1e} |"
            )
    lines += ["", "## DSA parameter draws", ""]
    for r in results:
        if "draw_s" in r:
            tesla = med(r["times"]["today"]["tesla"])
            share = r["steps"] * r["draw_s"] / tesla
            lines.append(
                f"- {r['shape']} batch {r['batch']} T {r['steps']}: one draw {r['draw_s'] * 1e6:.0f} us; memoising "
                f"the replayed step's draws would save {r['steps']} draws = {100 * share:.2f} % of today's tesla "
                "iteration."
            )
    lines += ["", "## Peak RSS of the worker processes (MiB, whole run so far)", ""]
    for r in results:
        lines.append(
            f"- {r['shape']} batch {r['batch']} T {r['steps']}: "
            + ", ".join(f"{v} {m:,.0f}" for v, m in r["peak_rss_mib"].items())
        )
    if memory:
        lines += [
            "",
            "## tesla-exact's snapshot policies: memory at the CIFAR-100 shape (ConvNet-3, P = 504,420), batch "
            f"{meta.get('memory_batch', '?')}",
            "",
            "Peak bytes of autograd's saved tensors during one engine call (`SavedTensorMeter`, deterministic) "
            "plus the parameter snapshots the engine keeps on the device (`snapshot_bytes`) and in host memory "
            "(`host_snapshot_bytes`; on a CPU that is the same RAM). `device` keeps T + 1 vectors, `host` keeps "
            "theta_T on the device (two more while prefetching on CUDA), `checkpoint` about 2 sqrt(T). CPU "
            "seconds are of one call, indicative only.",
            "",
            "| T | engine | policy | saved MiB | device snapshots MiB | saved + device snapshots vs tesla | host MiB "
            "| recomputed steps | CPU s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in memory:
            tesla = next(r for r in memory if r["steps"] == row["steps"] and r["engine"] == "tesla")
            total = (row["saved_mib"] + row["snapshot_mib"]) / (tesla["saved_mib"] + tesla["snapshot_mib"])
            lines.append(
                f"| {row['steps']} | {row['engine']} | {row['policy']} | {row['saved_mib']:.1f} | "
                f"{row['snapshot_mib']:.1f} | {100 * (total - 1):+.1f} % | {row['host_mib']:.1f} | "
                f"{row['recomputed_steps']} | {row['cpu_s']:.1f} |"
            )
    if store:
        gib = store["store_bytes"] / 2**30
        lines += [
            "",
            "## Expert read per step (CIFAR-100 shape, ConvNet-3, P = "
            f"{store['num_params']:,}, 51 snapshots per expert)",
            "",
            f"Store: {store['num_experts']} stand-in experts written to a temporary directory ({gib:.2f} GiB, "
            f"written in {store['write_s']:.0f} s). {store['picks']} random (expert, start epoch) picks; each step "
            "reads snapshots start, start + 3 and the last. `whole` = the baseline's path "
            "(`ExpertStore.trajectory`: the whole expert through a fresh 1 GiB LRU, then three rows); `rows` = "
            "today's `ExpertStore.rows` (3 rows). Warm: the files are in the page cache; cold: "
            "`posix_fadvise(DONTNEED)` on every expert file before each read.",
            "",
            "| path | page cache | wall s per step | CPU s per step |",
            "|---|---|---:|---:|",
        ]
        for label in ("whole", "rows"):
            for temperature in ("warm", "cold"):
                lines.append(
                    f"| {label} | {temperature} | {spread(store[f'{label}_{temperature}_wall_s'])} | "
                    f"{spread(store[f'{label}_{temperature}_cpu_s'])} |"
                )
    return "\n".join(lines) + "\n"


def kept_results(path: str, meta: dict[str, Any]) -> list[dict]:
    """The configurations of an earlier run's JSON, each stamped with the revision that measured it."""
    saved = json.loads(Path(path).read_text())
    results = saved["results"]
    for r in results:
        r.setdefault("today_rev", saved["meta"]["today_rev"])
    meta["kept"] = f"configurations reused from {path} (measured at {sorted({r['today_rev'] for r in results})})"
    return results


def main() -> None:
    """Parse arguments, run, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits (batch 10, 100) and CIFAR batch 10 at T = 10")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration (>= 5)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each building block")
    parser.add_argument("--baseline", default="cfe871e", help="git revision to compare against ('' for none)")
    parser.add_argument("--configs", default="", help="override: shape:batch:T,... (e.g. digits:100:10)")
    parser.add_argument("--store-experts", type=int, default=100, help="experts in the expert-read store (0: skip)")
    parser.add_argument("--store-picks", type=int, default=20, help="steps timed in the expert-read test")
    parser.add_argument("--output", default=str(ROOT / "reports" / "engine-speed.md"))
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for both workers (e.g. glibc MALLOC_* tunables)"
    )
    parser.add_argument("--memory-steps", default="10,40,100", help="T values of the snapshot-policy table ('')")
    parser.add_argument("--memory-batch", type=int, default=10, help="batch of the snapshot-policy table")
    parser.add_argument(
        "--keep",
        default="",
        help="reuse the configurations already measured in this JSON (each keeps its revision); measure the rest",
    )
    parser.add_argument(
        "--from-json", default="", help="rebuild the report from this JSON (no timing) and add the memory table"
    )
    args = parser.parse_args()
    if args.configs:
        configs = [(s, int(b), int(t)) for s, b, t in (c.split(":") for c in args.configs.split(","))]
    elif args.quick:
        configs = [("digits", 10, 10), ("digits", 100, 10), ("cifar", 10, 10)]
    else:
        configs = [(s, b, t) for s in ("digits", "cifar") for b in (10, 100) for t in (10, 20)]
    if args.quick:
        args.reps = min(args.reps, 3)
        args.store_experts = min(args.store_experts, 4)
    import torch

    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "today_rev": subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "baseline": args.baseline or "none",
        "load_before": tuple(round(x, 2) for x in os.getloadavg()),
        "env": dict(item.split("=", 1) for item in args.env),
    }
    started = time.perf_counter()
    memory_steps = [int(t) for t in args.memory_steps.split(",") if t]
    if args.quick:
        memory_steps = [t for t in memory_steps if t <= 10] or memory_steps[:1]
    meta["memory_batch"] = args.memory_batch
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        meta, results, store = saved["meta"], saved["results"], saved.get("expert_read")
        meta["memory_batch"] = args.memory_batch
        meta["rebuilt"] = (
            f"report rebuilt and memory table added by: python benchmarks/engine_speed.py --from-json {args.from_json}"
        )
        memory = snapshot_memory(memory_steps, args.memory_batch) if memory_steps else None
        Path(args.output).with_suffix(".json").write_text(
            json.dumps({"meta": meta, "results": results, "expert_read": store, "snapshot_memory": memory})
        )
        Path(args.output).write_text(report(results, store, meta, memory))
        print(f"wrote {args.output}")
        return
    results = kept_results(args.keep, meta) if args.keep else []
    done = {(r["shape"], r["batch"], r["steps"]) for r in results}
    configs = [c for c in configs if c not in done]
    with tempfile.TemporaryDirectory(prefix="engine-speed-") as tmp:
        workers = {"today": Worker("today", ROOT, meta["env"])}
        if args.baseline:
            workers["baseline"] = Worker("baseline", extract(args.baseline, Path(tmp)), meta["env"])
        try:
            for shape, batch, steps in configs:
                print(f"{shape} batch {batch} T {steps}", flush=True)
                results.append(run_config(workers, shape, batch, steps, max(args.rounds, 1), args.reps))
                results[-1]["today_rev"] = meta["today_rev"]
                Path(args.output).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}))
        finally:
            for w in workers.values():
                w.close()
        store = None
        if args.store_experts > 0:
            print(f"expert read: writing {args.store_experts} experts", flush=True)
            store = expert_read(args.store_experts, args.store_picks, Path(tmp) / "store")
    memory = snapshot_memory(memory_steps, args.memory_batch) if memory_steps else None
    meta["load_after"] = tuple(round(x, 2) for x in os.getloadavg())
    meta["run_s"] = time.perf_counter() - started
    Path(args.output).with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results, "expert_read": store, "snapshot_memory": memory})
    )
    Path(args.output).write_text(report(results, store, meta, memory))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
