"""Kill anywhere: SIGKILL a run, a bench, an expert training and a profile sweep at random instants
(and inside a checkpoint write), resume each with the same command until it completes, and compare
with an uninterrupted run.

The property: every restart ends in exit 0 or is killed (never an error, so never needs
``--overwrite``); the final artefacts equal the uninterrupted run's bitwise (CPU, one thread);
no temporary file and no lock is left (a lock a kill leaves after the result was written is
stale: its process is gone, the next command takes it over; the harness counts such cases).

Processes come from a fork server (``fork_server.py``) so that each starts in a fraction of a
second; the kill instants are drawn from a fixed seed within the uninterrupted run's duration.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from attack_tally import record

from dcbench_tesla.experts.store import ExpertStore
from dcbench_tesla.files import process_alive
from dcbench_tesla.synthetic import SyntheticSet

pytestmark = pytest.mark.slow

SEED = 14


class Surface:
    """One command under attack: how to (re)start it, whether it is done, what to compare.

    ``plan`` is the order of the kills: ``"write"`` (inside the ``kill_in_write``-th atomic write of
    that process, see fork_server.py) or ``"time"`` (after a delay drawn within the uninterrupted
    run's duration).
    """

    name = ""
    kill_in_write = 2
    plan = ("write", "time", "time")

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {"DCBENCH_CACHE": str(root / "cache"), "DCBENCH_DATA": str(root / "data")}

    def command(self) -> list:
        raise NotImplementedError

    def done(self) -> bool:
        """True once the artefacts are complete (a rerun is then not needed)."""
        return False

    def artefacts(self) -> dict:
        raise NotImplementedError

    def leftovers(self) -> list[Path]:
        """Temporary files, work folders and locks left anywhere under the surface's folder."""
        found = []
        for path in self.root.rglob("*"):
            if path.name.endswith(".tmp") or path.name == ".work" or path.name.startswith(".write-probe"):
                found.append(path)
        return found

    def locks(self) -> list[Path]:
        return list(self.root.rglob(".dcbench.lock"))


class RunSurface(Surface):
    name = "run (dm, 30 iterations, checkpoint every iteration)"
    kill_in_write = 6  # config.json is write 1, the checkpoints of iterations 1.. follow: the 5th checkpoint

    def command(self):
        base = ["run", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "30", "--set",
                "batch_real=16", "--checkpoint-every", "1", "--num-eval", "1", "--eval-epochs", "2", "--no-progress",
                "--output", self.root / "run"]  # fmt: skip
        return [*base, "--resume"] if (self.root / "run" / "checkpoint.safetensors").is_file() else base

    def done(self):
        return (self.root / "run" / "result.json").is_file()

    def artefacts(self):
        syn = SyntheticSet.load(self.root / "run" / "synthetic_set.safetensors")
        result = json.loads((self.root / "run" / "result.json").read_text())
        return {
            "images": syn.images,
            "labels": syn.labels,
            "iterations": result["iterations"],
            "evaluation": result["evaluation"]["by_model"],
            "baseline": result["baseline"]["by_model"],
        }


class BenchSurface(Surface):
    name = "bench (random and dm cells)"
    kill_in_write = 3  # bench.json, the random cell's config.json, then its synthetic set

    def command(self):
        return ["bench", "--methods", "random,dm", "--dataset", "digits", "--ipc", "1", "--iterations", "15", "--set",
                "dm.batch_real=16", "--num-eval", "1", "--eval-epochs", "1", "--no-progress", "--output",
                self.root / "bench"]  # fmt: skip

    def artefacts(self):
        cells = {}
        for cell in sorted((self.root / "bench" / "cells").iterdir()):
            result = json.loads((cell / "result.json").read_text())
            syn = SyntheticSet.load(cell / "synthetic_set.safetensors")
            cells[cell.name] = (syn.images, syn.labels, result["evaluation"]["by_model"], result["baseline"])
        table = pd.read_csv(self.root / "bench" / "results.csv")
        return {"cells": cells, "results.csv": table.drop(columns=[c for c in table if "time" in c]).to_csv()}


class ExpertsSurface(Surface):
    name = "experts (2 experts x 2 epochs)"
    kill_in_write = 2  # the manifest, then the first expert

    def command(self):
        return ["experts", "--dataset", "digits", "--num-experts", "2", "--epochs", "2", "--batch-size", "32",
                "--no-progress"]  # fmt: skip

    def artefacts(self):
        (directory,) = (self.root / "cache" / "experts").iterdir()
        store = ExpertStore.open(directory)
        trajectories = [store.trajectory(i) for i in range(store.num_experts)]
        return {"trajectories": trajectories, "accuracies": store.val_accuracies(), "manifest": store.metadata}


class ProfileSurface(Surface):
    name = "profile (tesla, one point)"
    kill_in_write = 3  # sweep.json, the point's record, then the CSV: the next sweep reads the point back
    plan = ("time", "write", "time")  # the first kill lands while the point's own process runs

    def command(self):
        return ["profile", "--methods", "tesla", "--dataset", "digits", "--steps", "1", "--batch-syn", "10", "--ipc",
                "1", "--iterations", "1", "--warmup", "0", "--device", "cpu", "--threads", "1", "--output",
                self.root / "profile"]  # fmt: skip

    def artefacts(self):
        table = pd.read_csv(self.root / "profile" / "profile.csv")
        keep = ["method", "dataset", "steps", "status", "num_params", "num_images", "peak_saved_tensors_mib"]
        return {"profile.csv": table[keep].to_csv()}


def equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def run_to_end(server, surface: Surface, log: Path, kill_after_s: float | None = None,
               kill_in_write: int | None = None) -> tuple[int, float]:  # fmt: skip
    """Start the surface's command; kill it after ``kill_after_s`` (if still running); its status and duration."""
    start = time.monotonic()
    pid = server.start(surface.command(), surface.root, surface.env, log, kill_in_write)
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        server.kill(pid)
    status = server.wait(pid)
    return status, time.monotonic() - start


@pytest.mark.parametrize("surface_cls", [RunSurface, BenchSurface, ExpertsSurface, ProfileSurface])
def test_killed_anywhere_then_resumed_equals_an_uninterrupted_run(fork_server, tmp_path, surface_cls):
    server = fork_server
    reference = surface_cls(tmp_path / "reference")
    status, duration_s = run_to_end(server, reference, tmp_path / "reference.log")
    assert status == 0, (tmp_path / "reference.log").read_text()[-3000:]

    attacked = surface_cls(tmp_path / "attacked")
    rng = random.Random(SEED)
    plan = [(kind, rng.uniform(0.05, 0.9) * duration_s if kind == "time" else None) for kind in surface_cls.plan]
    kills = restarts = 0
    for number, (kind, delay) in enumerate(plan):
        if surface_cls is RunSurface and attacked.done():
            break
        log = tmp_path / f"attempt-{number}.log"
        status, _ = run_to_end(
            server, attacked, log, kill_after_s=delay, kill_in_write=attacked.kill_in_write if kind == "write" else None
        )
        restarts += number > 0
        assert status in (0, -signal.SIGKILL), f"attempt {number} ended with {status}: {log.read_text()[-3000:]}"
        kills += status == -signal.SIGKILL
        record(f"kill {surface_cls.name}", "killed" if status == -signal.SIGKILL else "finished before the kill")
    final = tmp_path / "final.log"
    last = 0
    if not (surface_cls is RunSurface and attacked.done()):
        last, _ = run_to_end(server, attacked, final)
        restarts += 1
        assert last == 0, final.read_text()[-3000:]
    record(f"kill {surface_cls.name}", "restarts", restarts)

    identical = equal(reference.artefacts(), attacked.artefacts())
    record(f"kill {surface_cls.name}", "identical" if identical else "DIFFERENT")
    assert identical, f"{surface_cls.name}: the resumed artefacts differ from the uninterrupted run's"
    assert not attacked.leftovers(), attacked.leftovers()
    for lock in attacked.locks():  # only a kill after the result was written leaves one; it must be stale
        owner = json.loads(lock.read_text())
        assert not process_alive(owner["pid"]), lock
        record(f"kill {surface_cls.name}", "stale lock left after the result")
    print(f"{surface_cls.name}: {kills} kills, {restarts} restarts, identical: {identical}")
