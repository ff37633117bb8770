"""One profile point, run in a fresh process: ``python -m dcbench_tesla.profiling.point SPEC RESULT``.

``SPEC`` is a JSON file holding a :class:`PointSpec`; the process writes one JSON result to
``RESULT`` (atomically) whatever happens: ``status`` is ``"ok"``, ``"oom"`` (an allocation
failure: ``torch.cuda.OutOfMemoryError``, ``MemoryError``, or a ``RuntimeError`` whose message
says an allocation failed) or ``"failed"`` (any other error, with its message). A fresh process
per point gives every point a clean allocator, a clean CUDA context and its own ``ru_maxrss``.

Test hook (a FAKE failure, never a real measurement): when the environment variable
``DCBENCH_FAKE_OOM_ABOVE_STEPS=N`` is set, a point with more than ``N`` inner steps raises
:class:`FakeOutOfMemoryError` after its set-up, so the sweep's out-of-memory path can be tested
without exhausting memory. Only this module reads the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FAKE_OOM_ENV",
    "FakeOutOfMemoryError",
    "PointSpec",
    "card_labels",
    "describe",
    "execute",
    "is_out_of_memory",
    "run_point",
]

#: Environment variable of the FAKE out-of-memory test hook (read only by :func:`run_point`).
FAKE_OOM_ENV = "DCBENCH_FAKE_OOM_ABOVE_STEPS"

_OOM_PHRASES = (
    "out of memory",
    "cannot allocate memory",
    "can't allocate memory",
    "failed to allocate",
    "defaultcpuallocator",
)


class FakeOutOfMemoryError(RuntimeError):
    """A FAKE allocation failure injected by ``DCBENCH_FAKE_OOM_ABOVE_STEPS`` (tests only)."""


@dataclass
class PointSpec:
    """What one profile point runs.

    Attributes:
        method: Method id (a trajectory-matching method: it needs ``syn_steps`` and ``batch_syn``).
        dataset: Dataset whose image shape, class count and default model are used.
        steps: Inner matching steps ``syn_steps``.
        batch_syn: Synthetic images per inner step.
        ipc: Images per class of the synthetic set.
        iterations: Measured outer iterations.
        warmup: Outer iterations run first and not measured.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: Seed of the random stand-ins and of ``reset``.
        threads: Torch intra-op threads (None: torch's default).
        model: Student model (None: the dataset's default).
        options: Further method options (e.g. ``{"dsa_strategy": "none"}``).
    """

    method: str
    dataset: str
    steps: int
    batch_syn: int
    ipc: int
    iterations: int = 10
    warmup: int = 2
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        """Short human name, e.g. ``"tesla cifar100 steps=10 batch=100"``."""
        return f"{self.method} {self.dataset} steps={self.steps} batch={self.batch_syn}"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure (CUDA OOM, ``MemoryError`` or an allocator RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom_types = tuple(
        t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
    )
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


def _fake_oom_check(steps: int) -> None:
    raw = os.environ.get(FAKE_OOM_ENV, "").strip()
    if raw and steps > int(raw):
        raise FakeOutOfMemoryError(
            f"FAKE out of memory: injected for tests because {FAKE_OOM_ENV}={raw} and "
            f"syn_steps={steps} > {raw} (no allocation failed)"
        )


def card_labels(method: str, dataset: str, ipc: int) -> str | None:
    """The label rule of ``method``'s config card for ``dataset`` (its ``ipc`` card, else any), or None.

    The profiler overrides steps, batch and iterations, but keeps the label rule a method uses on
    a dataset (TESLA: soft labels on ImageNet-1K), because its cost (a teacher forward over the
    whole synthetic set each iteration) is part of the method's memory and time there.
    """
    from dcbench_tesla.method import spec as method_spec

    found = method_spec(method)
    card = found.card_for(dataset, ipc) or next((c for c in found.config_cards if c.dataset == dataset), None)
    return None if card is None else card.options.get("labels")


def _options(spec: PointSpec, model: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "syn_steps": spec.steps,
        "batch_syn": spec.batch_syn,
        "iterations": spec.warmup + spec.iterations,
        "model": model,
    }
    labels = card_labels(spec.method, spec.dataset, spec.ipc)
    if labels is not None:
        options["labels"] = labels
    return {**options, **spec.options}


def run_point(spec: PointSpec) -> dict[str, Any]:
    """Build the stand-ins and the distiller, measure, and return the result (raises on errors).

    The method runs with its defaults, the label rule of its config card for the dataset
    (:func:`card_labels`), the point's steps / batch / iterations, and ``spec.options`` on top.
    The expert source is an on-disk store (in a temporary directory) holding one random trajectory
    of ``max_start_epoch + expert_epochs`` epochs.
    """
    import torch

    from dcbench_tesla.data import DATASETS
    from dcbench_tesla.distiller import RunContext
    from dcbench_tesla.method import make
    from dcbench_tesla.profiling.measure import measure_point
    from dcbench_tesla.profiling.standins import random_dataset, write_standin_experts

    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    dataset_spec = DATASETS.get(spec.dataset)
    model = spec.model or dataset_spec.default_model
    dataset = random_dataset(spec.dataset, spec.ipc, seed=spec.seed)
    options = _options(spec, model)
    distiller = make(spec.method, RunContext(device=device, progress=False, notice=lambda _m: None), **options)
    opts = distiller.options
    # The stand-in experts are written to a temporary on-disk store, so each step reads its expert
    # rows through the real path (ExpertStore.rows).
    store_dir = tempfile.TemporaryDirectory(prefix="dcbench-standin-experts-")
    distiller.context.experts = write_standin_experts(
        store_dir.name, model, spec.dataset, epochs=opts.max_start_epoch + opts.expert_epochs, seed=spec.seed
    )
    try:
        measured = measure_point(
            distiller,
            dataset,
            ipc=spec.ipc,
            seed=spec.seed,
            iterations=spec.iterations,
            warmup=spec.warmup,
            device=device,
            before_measure=lambda: _fake_oom_check(spec.steps),
        )
    finally:
        distiller.close()
        store_dir.cleanup()
    return {**measured, "dsa_strategy": getattr(opts, "dsa_strategy", None)}


def describe(spec: PointSpec) -> dict[str, Any]:
    """What a point is, from the registries alone (recorded even when the point fails)."""
    from dcbench_tesla.data import DATASETS
    from dcbench_tesla.method import spec as method_spec

    dataset_spec = DATASETS.get(spec.dataset)
    c, h, w = dataset_spec.image_shape
    model = spec.model or dataset_spec.default_model
    kwargs = {**method_spec(spec.method).kwargs, **_options(spec, model)}
    return {
        "model": model,
        "image_shape": f"{c}x{h}x{w}",
        "num_classes": dataset_spec.num_classes,
        "engine": kwargs.get("engine"),
        "labels": kwargs.get("labels"),
        "snapshot_policy": kwargs.get("snapshot_policy"),
    }


def _environment(device: str) -> dict[str, Any]:
    import torch

    from dcbench_tesla.provenance import device_description

    env: dict[str, Any] = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda or "none"}
    try:
        env["device_name"] = device_description(device)
    except Exception as exc:  # an invalid device string is reported by the run itself
        env["device_name"] = f"unknown ({type(exc).__name__})"
    return env


def execute(spec: PointSpec) -> dict[str, Any]:
    """Run a point and classify the outcome; never raises (the result says what happened)."""
    record: dict[str, Any] = {**spec.to_dict(), "status": "ok", "error": ""}
    try:
        record.update(_environment(spec.device))
        record.update(describe(spec))
        record.update(run_point(spec))
    except BaseException as exc:  # classify everything, including MemoryError and KeyboardInterrupt
        record["status"] = "oom" if is_out_of_memory(exc) else "failed"
        record["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
        if record["status"] == "failed":
            record["traceback"] = traceback.format_exc()[-4000:]
            traceback.print_exc()
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point of the point subprocess: ``point SPEC_JSON RESULT_JSON``; exit 0/3 (oom)/1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m dcbench_tesla.profiling.point SPEC_JSON RESULT_JSON", file=sys.stderr)
        return 2
    from dcbench_tesla.files import write_json_atomic

    spec = PointSpec(**json.loads(Path(args[0]).read_text(encoding="utf-8")))
    record = execute(spec)
    write_json_atomic(args[1], record)
    return {"ok": 0, "oom": 3}.get(record["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
