"""The sweep runner: every point (method x dataset shape x steps) in a fresh subprocess.

Each point is one task of the command's executor (:mod:`dcbench_tesla.executors`): locally the
points run one after another; on Ray each task starts the point's fresh process on its worker,
with a whole GPU of its own on CUDA (so no other point's memory shows in its NVML peak) and its
threads as CPUs. CPU points measured side by side share the machine: their times are not those
of a serial sweep, their saved-tensor and allocator figures are.

Each point runs as ``python -m dcbench_tesla.profiling.point SPEC RESULT`` so its peaks start
from a clean allocator, CUDA context and ``ru_maxrss``. A point that runs out of memory is
recorded with status ``"oom"``, one that crashes (or writes no result, or times out) with
``"failed"`` and the tail of its stderr; the sweep always goes on. After every point the tidy CSV
(one row per point) is rewritten atomically, so an interrupted sweep keeps what it measured.

The parent process never initialises CUDA (that would put its own context on the GPU and into the
children's NVML device peaks): device names and driver versions come from the points' results.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dcbench_tesla.executors import Outcome, Task, current_executor, device_here, task_context
from dcbench_tesla.files import write_json_atomic, write_text_atomic
from dcbench_tesla.profiling.measure import MEASURE_KEYS
from dcbench_tesla.profiling.point import PointSpec
from dcbench_tesla.profiling.standins import RANDOM_STANDIN_NOTE

__all__ = [
    "CSV_COLUMNS",
    "CSV_NAME",
    "SWEEP_NAME",
    "plan_points",
    "records_to_frame",
    "run_point_subprocess",
    "run_sweep",
    "sweep_provenance",
]

CSV_NAME = "profile.csv"
PROVENANCE_NAME = "provenance.json"
#: What identifies a sweep in its output directory (compared when the same command runs again).
SWEEP_NAME = "sweep.json"
#: Working folder of the point processes, under ``points/`` (removed when the sweep ends).
_STDERR_TAIL = 3000

#: Columns of the tidy CSV (one row per method x dataset x batch x steps), in order.
CSV_COLUMNS = (
    "method",
    "dataset",
    "image_shape",
    "num_classes",
    "model",
    "engine",
    "labels",
    "snapshot_policy",
    "device",
    "device_name",
    "batch_syn",
    "ipc",
    "steps",
    "iterations",
    "warmup",
    "seed",
    "threads",
    "status",
    "error",
    *MEASURE_KEYS,
    "num_params",
    "num_images",
    "measures",
    "missing",
    "wall_s",
)


def plan_points(
    methods: Sequence[str],
    datasets: Sequence[str],
    steps: Iterable[int],
    *,
    batch_syn: int,
    ipc: int,
    iterations: int,
    warmup: int,
    device: str,
    seed: int = 0,
    threads: int | None = None,
    options: dict[str, Any] | None = None,
) -> list[PointSpec]:
    """The cartesian product, ordered dataset, method, then increasing steps."""
    ordered_steps = sorted(set(int(s) for s in steps))
    return [
        PointSpec(
            method=method,
            dataset=dataset,
            steps=step,
            batch_syn=batch_syn,
            ipc=ipc,
            iterations=iterations,
            warmup=warmup,
            device=device,
            seed=seed,
            threads=threads,
            options=dict(options or {}),
        )
        for dataset in datasets
        for method in methods
        for step in ordered_steps
    ]


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-_STDERR_TAIL:]


def run_point_subprocess(spec: PointSpec, workdir: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process and return its result record (never raises).

    Args:
        spec: The point.
        workdir: Directory for the spec and result files.
        timeout_s: Kill the point after this many seconds (None: no limit).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    fd, spec_name = tempfile.mkstemp(prefix="point-", suffix=".json", dir=workdir)
    os.close(fd)
    spec_path = Path(spec_name)
    result_path = spec_path.with_name(spec_path.stem + "-result.json")
    spec_path.write_text(json.dumps(spec.to_dict()), encoding="utf-8")
    env = dict(os.environ)
    if spec.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.threads)
    command = [sys.executable, "-m", "dcbench_tesla.profiling.point", str(spec_path), str(result_path)]
    start = time.perf_counter()
    base = {**spec.to_dict(), "status": "failed"}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        return {
            **base,
            "error": f"timed out after {timeout_s} s",
            "stderr_tail": _tail(exc.stderr),
            "wall_s": timeout_s,
        }
    wall = time.perf_counter() - start
    try:
        record = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        signal = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        hint = " SIGKILL: possibly the kernel's out-of-memory killer." if proc.returncode == -9 else ""
        record = {
            **base,
            "error": f"point process exited with code {proc.returncode}{signal} and wrote no result.{hint}",
        }
    finally:
        for path in (spec_path, result_path):
            path.unlink(missing_ok=True)
    record["wall_s"] = wall
    if record.get("status") != "ok":
        record["stderr_tail"] = _tail(proc.stderr)
    return record


def _point_task(spec: PointSpec, timeout_s: float | None) -> dict[str, Any]:
    """One point as an executor task: measured in a fresh process started here (never raises).

    In a remote worker the point gets the worker's GPU (``cuda:0`` of what it sees) and the task's
    thread count when the sweep named none, so what it measures is what it was given.
    """
    context = task_context()
    if context is not None:
        threads = spec.threads if spec.threads is not None else context["threads"]
        spec = dataclasses.replace(spec, device=str(device_here(spec.device)), threads=threads)
    with tempfile.TemporaryDirectory(prefix="dcbench-point-") as tmp:
        return run_point_subprocess(spec, Path(tmp), timeout_s=timeout_s)


def _failed_task_record(spec: PointSpec, outcome: Outcome) -> dict[str, Any]:
    """The record of a point whose task itself failed (its worker died on every attempt)."""
    return {**spec.to_dict(), "status": "failed", "error": outcome.summary(), "stderr_tail": _tail(outcome.detail)}


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return value


def records_to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The tidy table of point records: :data:`CSV_COLUMNS`, lists joined with ``"; "``."""
    rows = [{col: _cell(rec.get(col)) for col in CSV_COLUMNS} for rec in records]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def _point_filename(spec: PointSpec) -> str:
    device = spec.device.replace(":", "")
    return f"{spec.dataset}-{spec.method}-b{spec.batch_syn}-ipc{spec.ipc}-s{spec.steps}-{device}.json"


def _finished_record(output: Path, spec: PointSpec) -> dict[str, Any] | None:
    """The record an earlier (interrupted) sweep wrote for ``spec``, if it measured it (ok or oom)."""
    path = output / "points" / _point_filename(spec)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("ok", "oom"):
        return None
    return record if all(record.get(k) == v for k, v in spec.to_dict().items()) else None


def _describe(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return f"{record.get('status')}: {str(record.get('error', ''))[:160]}"
    memory = next(
        (
            f"{record[k]:.1f} MiB ({k})"
            for k in ("peak_alloc_mib", "peak_saved_plus_snapshots_mib", "peak_saved_tensors_mib")
            if record.get(k) is not None
        ),
        "",
    )
    return f"ok {memory}, {record.get('step_time_s', float('nan')):.3f} s/iteration"


def sweep_provenance(records: Sequence[dict[str, Any]], command: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a sweep: command, settings, versions, device, threads, executor, NVML, stand-in note."""
    from dcbench_tesla.executors import executor_record
    from dcbench_tesla.provenance import git_revision, package_versions

    first_ok = next((r for r in records if r.get("status") == "ok"), records[0] if records else {})
    nvml = next((r["nvml"] for r in records if isinstance(r.get("nvml"), dict)), None)
    if nvml is None:  # CPU points: record why NVML would not be there (NVML never touches CUDA)
        from dcbench_tesla.profiling.nvml import NvmlSampler

        probe = NvmlSampler()
        nvml = {**probe.info(), "used": False, "why_unused": "CPU points (NVML reads GPU memory)"}
        probe.close()
    return {
        "command": command,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "device": first_ok.get("device"),
        "device_name": first_ok.get("device_name"),
        "threads": sorted({r["threads"] for r in records if r.get("threads") is not None}),
        "versions": {**package_versions(), "torch_in_points": first_ok.get("torch_version")},
        "git_revision": git_revision(),
        "executor": executor_record(),
        "nvml": nvml,
        "note": RANDOM_STANDIN_NOTE,
        "statuses": {s: sum(r.get("status") == s for r in records) for s in ("ok", "oom", "failed")},
    }


def run_sweep(
    points: Sequence[PointSpec],
    output: Path | str,
    *,
    command: str = "",
    settings: dict[str, Any] | None = None,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
    table_steps: int | None = None,
    reports: bool = True,
    resume: bool = False,
) -> pd.DataFrame:
    """Run every point in its own process, write the CSV, per-point JSON, provenance and reports.

    With ``resume``, a point whose record an earlier, interrupted sweep of the same points wrote
    (``points/*.json``, status ok or oom) is read back instead of measured again.

    Args:
        points: The points, in the order to run them.
        output: Output directory (created; files in it are replaced).
        command: The command line that started the sweep (for provenance).
        settings: Sweep settings recorded in the provenance.
        timeout_s: Per-point time limit (None: none).
        echo: Progress printer.
        table_steps: Steps of Table 5 / Figure 3 (None: 50 if measured, else the largest common).
        reports: Write the Markdown tables and figures at the end.
        resume: Read back the points an interrupted sweep measured.

    Returns:
        The tidy table (also written to ``output/profile.csv``).
    """
    from dcbench_tesla.profiling.report import write_reports

    output = Path(output)
    (output / "points").mkdir(parents=True, exist_ok=True)
    executor = current_executor()
    measured: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for index, spec in enumerate(points):
        record = _finished_record(output, spec) if resume else None
        if record is None:
            todo.append(index)
            continue
        measured[index] = record
        echo(f"[{index + 1}/{len(points)}] {spec.label}: measured earlier, read back ({_describe(record)})")
    tasks = [
        Task(
            _point_filename(points[i]).rsplit(".", 1)[0],
            _point_task,
            (points[i], timeout_s),
            device=points[i].device,
            threads=points[i].threads,
        )
        for i in todo
    ]
    outcomes = executor.map(tasks, desc="points", progress=executor.remote, log_dir=output / "logs")
    for number, outcome in enumerate(outcomes, start=len(measured) + 1):
        index = todo[outcome.index]
        spec = points[index]
        record = outcome.value if outcome.ok else _failed_task_record(spec, outcome)
        measured[index] = record
        write_json_atomic(output / "points" / _point_filename(spec), record)
        write_text_atomic(
            output / CSV_NAME, records_to_frame([measured[i] for i in sorted(measured)]).to_csv(index=False)
        )
        echo(f"[{number}/{len(points)}] {spec.label}: {_describe(record)}")
    records = [measured[i] for i in sorted(measured)]
    frame = records_to_frame(records)
    provenance = sweep_provenance(records, command, settings or {})
    write_json_atomic(output / PROVENANCE_NAME, provenance)
    if reports:
        write_reports(frame, output, provenance, table_steps=table_steps)
    return frame
