"""Persistent timing worker for benchmarks/engine_speed.py (one per code version).

Runs in its own process with ``dcbench_tesla`` importable from the code version under test (the
working tree, or an extracted older commit on ``PYTHONPATH``) and one torch thread. It reads one
JSON command per line on stdin and answers one JSON line on stdout:

- ``{"cmd": "setup", "shape": "digits"|"cifar", "batch": B, "steps": T}``: build the problem;
- ``{"cmd": "engine", "name": "unrolled"|"tesla"|"adjoint"}``: run the engine once, time it;
- ``{"cmd": "blocks", "mode": M, "reps": R}``: building-block costs with FlatParams mode ``M``;
- ``{"cmd": "draw", "reps": R}``: the cost of one DSA parameter draw;
- ``{"cmd": "quit"}``.

Only APIs present at the issue's starting commit (cfe871e) and today are used, so both versions
run the same problem: same seeds, model, images, batches, DSA seeds and step size.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dcbench_tesla  # noqa: E402
from dcbench_tesla.data.augment import DSA  # noqa: E402
from dcbench_tesla.matching import ENGINES, MatchingProblem  # noqa: E402
from dcbench_tesla.models import build_model  # noqa: E402

try:  # today
    from dcbench_tesla.models.flat import FlatParams
except ImportError:  # cfe871e
    from dcbench_tesla.matching import FlatParams  # type: ignore[attr-defined,no-redef]

torch.set_num_threads(1)

SHAPES = {
    # name: (model, channels, image size, classes, images per class)
    "digits": ("convnet", 1, 8, 10, 10),
    "cifar": ("convnet3", 3, 32, 10, 10),
}


class Bench:
    """The problem of one (shape, batch, steps) configuration."""

    def __init__(self, shape: str, batch: int, steps: int) -> None:
        model, channels, size, classes, ipc = SHAPES[shape]
        torch.manual_seed(0)
        self.net = build_model(model, channels=channels, num_classes=classes, image_size=size)
        self.flat = FlatParams(self.net)
        gen = torch.Generator().manual_seed(1)
        theta0 = self.flat.flatten()
        target = theta0 + 0.01 * theta0.abs().mean() * torch.randn(theta0.shape, generator=gen)
        n = classes * ipc
        self.images = torch.randn(n, channels, size, size, generator=gen)
        self.labels = torch.arange(n) % classes
        batches = []
        for _ in range(steps):
            batches.append(torch.arange(n) if batch >= n else torch.randperm(n, generator=gen)[:batch])
        dsa = DSA()
        self.dsa = dsa
        self.size = size
        self.batch = min(batch, n)

        def augment(x: torch.Tensor, step: int) -> torch.Tensor:
            return dsa(x, seed=1000 + step)

        self.problem = MatchingProblem(
            forward=self.flat.forward,
            theta_start=theta0,
            theta_target=target,
            images=self.images,
            labels=self.labels,
            batches=batches,
            syn_lr=torch.tensor(0.01),
            augment=augment,
        )

    def engine(self, name: str) -> dict[str, Any]:
        """Run engine ``name`` once: CPU and wall seconds, and a sample of its answer."""
        engine = ENGINES.get(name)
        cpu, wall = time.process_time(), time.perf_counter()
        out = engine(self.problem)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "cpu_s": cpu,
            "wall_s": wall,
            "loss": float(out.loss),
            "images": out.images.reshape(-1)[:: max(1, out.images.numel() // 4096)].tolist(),
            "images_norm": float(out.images.norm()),
            "syn_lr": float(out.syn_lr),
            "snapshot_bytes": int(getattr(out, "snapshot_bytes", 0)),
        }

    def blocks(self, mode: str, reps: int) -> dict[str, Any]:
        """CPU seconds of F, F+B and the second-order step with FlatParams ``mode`` (``reps`` each)."""
        try:
            flat = FlatParams(self.net, mode=mode)  # type: ignore[call-arg]
        except TypeError:  # cfe871e: functional_call only
            if mode != "module":
                return {"error": "mode not available"}
            flat = FlatParams(self.net)
        x = self.dsa(self.images[: self.batch], seed=7)
        y = self.labels[: self.batch]
        theta = flat.flatten()
        probe = torch.randn(theta.shape, generator=torch.Generator().manual_seed(2))

        def forward() -> None:
            with torch.no_grad():
                flat.forward(theta, x)

        def forward_backward() -> None:
            t = theta.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(flat.forward(t, x), y), t)

        def second_order(wrt_theta: bool) -> None:
            t = theta.clone().requires_grad_(True)
            xx = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(flat.forward(t, xx), y), t, create_graph=True)
            torch.autograd.grad(torch.dot(probe, g), [t, xx] if wrt_theta else [xx])

        fns = {
            "F": forward,
            "FB": forward_backward,
            "FB2DB_X": lambda: second_order(False),
            "FB2DB_thetaX": lambda: second_order(True),
        }
        out: dict[str, Any] = {"mode": getattr(flat, "forward_mode", "module")}
        for name, fn in fns.items():
            fn()
            times = []
            for _ in range(reps):
                start = time.process_time()
                fn()
                times.append(time.process_time() - start)
            out[name] = times
        return out

    def draw(self, reps: int) -> dict[str, Any]:
        """Mean CPU seconds of one DSA parameter draw at this batch size."""
        start = time.process_time()
        for i in range(reps):
            self.dsa.draw(i, self.batch, (self.size, self.size))
        return {"draw_s": (time.process_time() - start) / reps}


def main() -> None:
    """Serve commands until ``quit``."""
    bench: Bench | None = None
    print(json.dumps({"ready": True, "package": dcbench_tesla.__file__, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "setup":
                bench = Bench(cmd["shape"], int(cmd["batch"]), int(cmd["steps"]))
                reply: dict[str, Any] = {"params": bench.problem.theta_start.numel()}
            elif cmd["cmd"] == "engine":
                assert bench is not None
                reply = bench.engine(cmd["name"])
            elif cmd["cmd"] == "blocks":
                assert bench is not None
                reply = bench.blocks(cmd["mode"], int(cmd["reps"]))
            elif cmd["cmd"] == "draw":
                assert bench is not None
                reply = bench.draw(int(cmd["reps"]))
            else:
                reply = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
