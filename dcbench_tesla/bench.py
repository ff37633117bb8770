"""Benchmark sweeps: one normal run per (method, IPC) cell, resumable, tabulated like the paper.

A bench directory holds::

    bench.json                  the request, compared on every re-run (written atomically)
    cells/<method>-ipc<N>/      a normal run directory per cell (see ``runner.RESULT_SCHEMA``)
    cells/whole-dataset/        the whole training set under the protocol (``whole_dataset``)
    results.csv  table1.md  table1.csv  [table2.md  table2.csv]   (see :mod:`bench_tables`)

A cell whose ``result.json`` exists is read back, never recomputed; a cell directory
without one (an interrupted run) is recomputed. So killing a bench and running the same
command again computes only what is missing. Expert trajectories are shared between cells
by the experts cache (keyed by their config), not by this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dcbench_tesla import runner
from dcbench_tesla.bench_tables import DERIVED_FILES, WHOLE_DATASET, results_frame, write_tables
from dcbench_tesla.config import build_options
from dcbench_tesla.data import DATASETS
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import protocol_for
from dcbench_tesla.files import ensure_writable_dir, write_json_atomic
from dcbench_tesla.method import distiller_class, spec
from dcbench_tesla.models import MODELS
from dcbench_tesla.runner import RunRequest

BENCH_SCHEMA_VERSION = 1
MANIFEST = "bench.json"
#: The method whose run with ``whole_dataset=True`` gives the whole-dataset cell (its own
#: IPC-1 result is ignored there): the upper bound needs no distillation.
_WHOLE_DATASET_CARRIER = "random"


@dataclass
class BenchRequest:
    """Everything ``dcbench bench`` asks for. None means "the default" (as in :class:`RunRequest`).

    Attributes:
        methods: Method ids, in table-column order.
        dataset: Dataset name.
        ipcs: Images-per-class values, in table-row order.
        output: The bench directory.
        eval_models: Architectures to evaluate on (first one: Table 1) [dataset default].
        num_eval_models: K, models per architecture [protocol's].
        eval_epochs: Epochs per evaluation model [protocol's].
        protocol: Evaluation protocol name [short on digits, paper elsewhere].
        iterations: Outer iterations of every method that optimises (methods whose resolved
            iteration count is 0, such as ``random``, keep 0).
        options: Method options. A plain key applies to every method that has the option;
            ``"method.key"`` applies to that method only.
        whole_dataset: Also evaluate the whole training set once (its own cell).
        exclude: Cells of the grid to leave out, as ``"<method>-ipc<N>"`` (shown as "–").
        seed: Seed of every run.
        overwrite: Discard the results in ``output`` and compute every cell again.
        data_root: Directory holding dataset folders.
        device: Torch device.
        threads: Torch intra-op threads.
        progress: Show progress bars.
        cache_dir: Cache of ZCA states and experts [``$DCBENCH_CACHE``].
    """

    methods: list[str]
    dataset: str
    ipcs: list[int]
    output: Path
    eval_models: list[str] | None = None
    num_eval_models: int | None = None
    eval_epochs: int | None = None
    protocol: str | None = None
    iterations: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    whole_dataset: bool = False
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    overwrite: bool = False
    data_root: Path | None = None
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    cache_dir: Path | None = None


@dataclass
class Cell:
    """One run of the bench: a method at one IPC, or the whole-dataset upper bound."""

    name: str
    method: str
    ipc: int | None
    request: RunRequest

    def to_dict(self) -> dict[str, Any]:
        """The manifest's entry for this cell."""
        return {"name": self.name, "method": self.method, "ipc": self.ipc, "dir": f"cells/{self.name}"}


@dataclass
class BenchPlan:
    """A validated request: what identifies it (compared on re-runs) and its cells."""

    identity: dict[str, Any]
    cells: list[Cell]
    output: Path


def cell_name(method: str, ipc: int) -> str:
    """``"<method>-ipc<N>"``: the directory name of a cell under ``cells/``."""
    return f"{method}-ipc{ipc}"


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _check_ipcs(ipcs: list[Any]) -> list[int]:
    if not ipcs:
        raise UserError("--ipc needs at least one value, e.g. --ipc 1,10,50")
    for ipc in ipcs:
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise UserError(f"--ipc values must be positive integers, got {ipc!r}")
    return _unique(ipcs)


def _same_method(a: str, b: str) -> bool:
    return a.replace("-", "_") == b.replace("-", "_")


def _split_options(options: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Distribute plain and ``method.key`` options to the methods they apply to."""
    fields = {m: {f.name for f in dataclasses.fields(distiller_class(spec(m)).Config)} for m in methods}
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    scoped: list[tuple[str, str, Any]] = []
    for key, value in options.items():
        scope, dot, name = key.rpartition(".")
        if dot:
            target = next((m for m in methods if _same_method(m, scope)), None)
            if target is None:
                raise UserError(f"--set {key}: {scope!r} is not one of the bench's methods ({', '.join(methods)})")
            scoped.append((target, name.replace("-", "_"), value))
            continue
        name = key.replace("-", "_")
        takers = [m for m in methods if name in fields[m]]
        if not takers:
            every = sorted(set().union(*fields.values()))
            close = difflib.get_close_matches(name, every, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            listing = "; ".join(f"{m}: {', '.join(sorted(fields[m]))}" for m in methods)
            raise UserError(f"--set {key}: no method of this bench has an option {name!r}.{hint} Options: {listing}.")
        for m in takers:
            per_method[m][name] = value
    for method, name, value in scoped:  # scoped options win over plain ones
        per_method[method][name] = value
    return per_method


def _resolved_iterations(run_request: RunRequest) -> int:
    method_spec = spec(run_request.method)
    options, _, _ = runner.resolve_method_options(dataclasses.replace(run_request, iterations=None), method_spec)
    built = build_options(distiller_class(method_spec).Config, options, owner=f"method {run_request.method!r}")
    return int(getattr(built, "iterations", 0))


def plan(request: BenchRequest) -> BenchPlan:
    """Validate every input before any cell runs and lay out the cells.

    Raises:
        UserError: unknown methods, datasets, models or protocol (with suggestions), bad IPC
            values, unknown or ill-typed options, a bad exclude entry, device or thread count.
    """
    methods = _unique(list(request.methods))
    if not methods:
        raise UserError("--methods needs at least one method, e.g. --methods random,dm,mtt,tesla")
    for method in methods:
        spec(method)
    dataset_spec = DATASETS.get(request.dataset)
    ipcs = _check_ipcs(list(request.ipcs))
    models = _unique(list(request.eval_models or [dataset_spec.default_model]))
    for model in models:
        MODELS.get(model)
    protocol = protocol_for(request.dataset, request.protocol, request.num_eval_models, request.eval_epochs)
    if request.iterations is not None and request.iterations < 0:
        raise UserError(f"--iterations must be at least 0, got {request.iterations}")
    if request.threads is not None and request.threads < 1:
        raise UserError("--threads must be at least 1")
    runner.resolve_device(request.device)
    if request.data_root is not None and not Path(request.data_root).is_dir():
        raise UserError(f"--data-root {str(request.data_root)!r} is not a directory")
    grid = [cell_name(m, ipc) for m in methods for ipc in ipcs]
    exclude = _unique(list(request.exclude))
    for name in exclude:
        if name not in grid:
            raise UserError(f"--exclude {name!r} is not a cell of this bench; cells are: {', '.join(grid)}")
    per_method = _split_options(dict(request.options), methods)

    common = {
        "dataset": request.dataset,
        "seed": request.seed,
        "data_root": request.data_root,
        "eval_models": models,
        "protocol": protocol.name,
        "num_eval_models": protocol.num_models,
        "eval_epochs": protocol.epochs,
        "device": request.device,
        "threads": request.threads,
        "progress": request.progress,
        "cache_dir": request.cache_dir,
        "overwrite": True,  # a cell is only ever run when it has no result.json
    }
    cells: list[Cell] = []
    normalised: dict[str, dict[str, Any]] = {}
    for method in methods:
        method_spec = spec(method)
        config_cls = distiller_class(method_spec).Config
        built = build_options(config_cls, {**method_spec.kwargs, **per_method[method]}, owner=f"method {method!r}")
        normalised[method] = {key: getattr(built, key) for key in per_method[method]}
        for ipc in ipcs:
            run_request = RunRequest(method=method, ipc=ipc, options=per_method[method], **common)
            if request.iterations is not None and _resolved_iterations(run_request) > 0:
                run_request.iterations = request.iterations
            options, _, _ = runner.resolve_method_options(run_request, method_spec)
            build_options(config_cls, options, owner=f"method {method!r} at IPC {ipc}")
            if cell_name(method, ipc) not in exclude:
                cells.append(Cell(cell_name(method, ipc), method, ipc, run_request))
    if request.whole_dataset:
        whole = RunRequest(method=_WHOLE_DATASET_CARRIER, ipc=1, baseline=False, whole_dataset=True, **common)
        cells.append(Cell(WHOLE_DATASET, WHOLE_DATASET, None, whole))
    identity = {
        "methods": methods,
        "dataset": request.dataset,
        "ipcs": ipcs,
        "eval_models": models,
        "protocol": {"name": protocol.name, "num_models": protocol.num_models, "epochs": protocol.epochs},
        "iterations": request.iterations,
        "options": normalised,
        "whole_dataset": bool(request.whole_dataset),
        "exclude": exclude,
        "seed": request.seed,
    }
    identity = json.loads(json.dumps(identity, default=str))  # compare as it reads back from bench.json
    return BenchPlan(identity=identity, cells=cells, output=Path(request.output))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in _unique([*new, *old]) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now" for k in keys)


def open_bench_dir(bench_plan: BenchPlan, request: BenchRequest) -> None:
    """Check ``output`` can hold this bench; write ``bench.json``; clear it first on overwrite.

    Raises:
        UserError: ``output`` holds another request's bench (without ``overwrite``), or files
            that are not a bench, or cannot be written.
    """
    output = bench_plan.output
    manifest_path = output / MANIFEST
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {str(output)!r} exists and is not a directory")
    old = None
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if not request.overwrite:
                raise UserError(
                    f"{manifest_path} is unreadable ({exc}); pass --overwrite to start this bench again"
                ) from exc
            old = {}
        if old.get("request") != bench_plan.identity and not request.overwrite:
            differences = _differences(old.get("request") or {}, bench_plan.identity)
            raise UserError(
                f"bench directory {str(output)!r} holds a different request ({differences}). Choose another "
                "--output, or pass --overwrite to discard its results and compute every cell again."
            )
    elif output.is_dir() and any(output.iterdir()):
        # Never clear a folder that is not a bench, not even with --overwrite.
        raise UserError(
            f"--output {str(output)!r} already holds files but no {MANIFEST}: it is not a bench directory. "
            "Choose a new or empty --output."
        )
    ensure_writable_dir(output)
    if request.overwrite:
        for cell in bench_plan.cells:
            (output / "cells" / cell.name / "result.json").unlink(missing_ok=True)
        for name in DERIVED_FILES:
            (output / name).unlink(missing_ok=True)
    if old is None or old.get("request") != bench_plan.identity or request.overwrite:
        write_json_atomic(
            manifest_path,
            {
                "schema_version": BENCH_SCHEMA_VERSION,
                "request": bench_plan.identity,
                "cells": [cell.to_dict() for cell in bench_plan.cells],
                "command": " ".join(["dcbench", *sys.argv[1:]]),
                "environment": {
                    "data_root": str(request.data_root) if request.data_root else None,
                    "device": request.device,
                    "threads": request.threads,
                },
            },
        )


def _read_cell(cell: Cell, result_path: Path) -> dict[str, Any]:
    """Read back a finished cell, checking it answers this cell's request."""
    try:
        record = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{result_path} is unreadable ({exc}); delete it to recompute that cell") from exc
    req = cell.request
    protocol = (record.get("evaluation") or {}).get("protocol") or {}
    found = {
        "method": (record.get("method") or {}).get("id"),
        "dataset": record.get("dataset"),
        "ipc": record.get("ipc"),
        "models": sorted((record.get("evaluation") or {}).get("by_model") or {}),
        "num_models": protocol.get("num_models"),
        "epochs": protocol.get("epochs"),
    }
    wanted = {
        "method": req.method,
        "dataset": req.dataset,
        "ipc": req.ipc,
        "models": sorted(req.eval_models or []),
        "num_models": req.num_eval_models,
        "epochs": req.eval_epochs,
    }
    if found != wanted:
        raise UserError(
            f"{result_path} answers another request ({_differences(found, wanted)}); "
            "delete that cell directory, or pass --overwrite to recompute every cell"
        )
    return record


def run_cells(bench_plan: BenchPlan) -> dict[str, dict[str, Any]]:
    """Run every cell that has no ``result.json``; read back the others. Returns records by cell."""
    records: dict[str, dict[str, Any]] = {}
    total = len(bench_plan.cells)
    for index, cell in enumerate(bench_plan.cells, start=1):
        cell_dir = bench_plan.output / "cells" / cell.name
        result_path = cell_dir / "result.json"
        if result_path.is_file():
            print(f"[{index}/{total}] {cell.name}: done earlier, read back from {result_path}")
            records[cell.name] = _read_cell(cell, result_path)
            continue
        request = dataclasses.replace(cell.request, output=cell_dir)
        if (cell_dir / runner.CHECKPOINT).is_file():
            state = "interrupted earlier, resuming from its checkpoint"
            request = dataclasses.replace(request, overwrite=False, resume=True)
        else:
            state = "interrupted earlier, computing again" if cell_dir.is_dir() else "computing"
        print(f"[{index}/{total}] {cell.name}: {state}")
        try:
            records[cell.name] = runner.run(request)
        except (KeyboardInterrupt, UserError):  # Ctrl-C, or a run stopped with a message
            print(
                f"\nbench stopped in cell {cell.name}; finished cells are kept, and the same command "
                "again computes only the missing ones",
                file=sys.stderr,
            )
            raise
    return records


def run_bench(
    methods: list[str],
    dataset: str,
    ipcs: list[int],
    eval_models: list[str] | None,
    output_dir: Path | str,
    **options: Any,
) -> pd.DataFrame:
    """Run a bench: one normal run per (method, IPC) cell, then the tidy results and tables.

    Args:
        methods: Method ids (table columns, in order).
        dataset: Dataset name.
        ipcs: Images-per-class values (table rows, in order).
        eval_models: Evaluation architectures [dataset default]; the first one makes Table 1.
        output_dir: The bench directory.
        **options: Further :class:`BenchRequest` fields (``num_eval_models``, ``eval_epochs``,
            ``protocol``, ``iterations``, ``options``, ``whole_dataset``, ``exclude``, ``seed``,
            ``overwrite``, ``data_root``, ``device``, ``threads``, ``progress``, ``cache_dir``).

    Returns:
        The tidy results (also written to ``results.csv``).

    Raises:
        UserError: any invalid input (before a cell runs) or a bench directory holding a
            different request.
    """
    known = {f.name for f in dataclasses.fields(BenchRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_bench() got unknown option(s) {unknown}; valid: {sorted(known)}")
    request = BenchRequest(
        methods=list(methods),
        dataset=dataset,
        ipcs=list(ipcs),
        output=Path(output_dir),
        eval_models=eval_models,
        **options,
    )
    return run_bench_request(request)


def run_bench_request(request: BenchRequest) -> pd.DataFrame:
    """:func:`run_bench` for a ready :class:`BenchRequest`."""
    bench_plan = plan(request)
    open_bench_dir(bench_plan, request)
    run_cells(bench_plan)
    written = write_tables(bench_plan.output)
    for path in written:
        print(f"wrote {path}")
    return results_frame(bench_plan.output)
