"""Benchmark sweeps: one normal run per (method, IPC) cell, resumable, tabulated like the paper.

A bench directory holds::

    bench.json                  the request, compared on every re-run (written atomically)
    cells/<method>-ipc<N>/      a normal run directory per cell (see :mod:`dcbench_tesla.run.rundir`)
    cells/whole-dataset/        the whole training set under the protocol (``whole_dataset``)
    results.csv  table1.md  table1.csv  [table2.md  table2.csv]   (see :mod:`dcbench_tesla.run.tables`)

Every cell is resolved with :func:`~dcbench_tesla.run.request.resolve` before any cell runs, so a
bad input stops the bench before it starts. A cell whose ``result.json`` exists is read back, never
recomputed, once it is checked to answer the cell as it resolves now (method options and ZCA included:
a card edited since makes the bench stop and name what changed); a cell with a checkpoint is resumed;
any other cell directory is computed again. So killing a bench and running the same command again
computes only what is missing. Expert
trajectories are shared between cells by the experts cache (keyed by their config). Cells run as
tasks of the command's executor (one after another locally, side by side on Ray; see
:func:`run_cells`), with their logs in ``logs/<cell>.log``.
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

from dcbench_tesla.errors import UserError
from dcbench_tesla.executors import Task, TaskFailures, current_executor, device_here
from dcbench_tesla.files import ensure_writable_dir, user_files, write_json_atomic
from dcbench_tesla.method import baseline_method, distiller_class, spec
from dcbench_tesla.provenance import command_line
from dcbench_tesla.run import runner
from dcbench_tesla.run.request import ResolvedRun, RunRequest, resolve
from dcbench_tesla.run.rundir import RunDir
from dcbench_tesla.run.tables import DERIVED_FILES, WHOLE_DATASET, results_frame, write_tables

BENCH_SCHEMA_VERSION = 1
MANIFEST = "bench.json"


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
        protocol: Evaluation protocol name [the dataset's default].
        iterations: Outer iterations of every method that optimises (methods whose resolved
            iteration count is 0, such as the random baseline, keep 0).
        options: Method options. A plain key applies to every method that has the option;
            ``"method.key"`` applies to that method only.
        whole_dataset: Also evaluate the whole training set once (its own cell).
        exclude: Cells of the grid to leave out, as ``"<method>-ipc<N>"`` (shown as "–").
        seed: Seed of every run.
        overwrite: Discard the results in ``output`` and compute every cell again.
        data_root: Directory holding dataset folders.
        image_size: Image side for datasets that resize (``imagefolder``).
        device: Torch device.
        threads: Torch intra-op threads.
        progress: Show progress bars.
        cache_dir: Cache of ZCA states and experts [``$DCBENCH_CACHE``].
        yes: Run cells whose estimated cost is far above the dataset's config cards.
        real: Evaluate the whole training pool with hard labels beside every cell (cached; HLR, DDRS);
            None: only when already cached.
        ddrs_weight: ``w`` of DDRS in every cell and in ``ranking.md``.
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
    image_size: int | None = None
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    cache_dir: Path | None = None
    yes: bool = False
    real: bool | None = None
    ddrs_weight: float = 0.5


@dataclass
class Cell:
    """One run of the bench: a method at one IPC, or the whole-dataset upper bound."""

    name: str
    method: str
    ipc: int | None
    run: ResolvedRun

    @property
    def rundir(self) -> RunDir:
        """The cell's run directory."""
        return self.run.rundir

    def to_dict(self) -> dict[str, Any]:
        """The manifest's entry for this cell."""
        return {"name": self.name, "method": self.method, "ipc": self.ipc, "dir": f"cells/{self.name}"}


@dataclass
class BenchPlan:
    """A validated request: what identifies it (compared on re-runs) and its cells."""

    identity: dict[str, Any]
    cells: list[Cell]
    output: Path
    baseline_method: str


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


def split_options(options: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
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


def _cell_run(request: BenchRequest, base: RunRequest, name: str) -> ResolvedRun:
    """Resolve one cell (with ``--iterations`` only for methods that optimise), naming it on errors."""
    run_request = dataclasses.replace(base, output=Path(request.output) / "cells" / name)
    try:
        resolved = resolve(run_request)
        if request.iterations is not None and int(getattr(resolved.options, "iterations", 0)) > 0:
            resolved = resolve(dataclasses.replace(run_request, iterations=request.iterations))
    except UserError as exc:
        raise UserError(f"cell {name}: {exc}") from None
    return resolved


def plan(request: BenchRequest) -> BenchPlan:
    """Validate every input before any cell runs and lay out the cells (each one resolved).

    Raises:
        UserError: anything a run would refuse (unknown methods, datasets, models, protocol, bad
            options, device, threads), bad IPC values or a bad exclude entry.
    """
    methods = _unique(list(request.methods))
    if not methods:
        raise UserError("--methods needs at least one method, e.g. --methods random,dm,mtt,tesla")
    for method in methods:
        spec(method)
    ipcs = _check_ipcs(list(request.ipcs))
    grid = [cell_name(m, ipc) for m in methods for ipc in ipcs]
    exclude = _unique(list(request.exclude))
    for name in exclude:
        if name not in grid:
            raise UserError(f"--exclude {name!r} is not a cell of this bench; cells are: {', '.join(grid)}")
    per_method = split_options(dict(request.options), methods)
    common = RunRequest(
        method=methods[0],
        dataset=request.dataset,
        seed=request.seed,
        data_root=request.data_root,
        image_size=request.image_size,
        eval_models=_unique(list(request.eval_models)) if request.eval_models else None,
        protocol=request.protocol,
        num_eval_models=request.num_eval_models,
        eval_epochs=request.eval_epochs,
        device=request.device,
        threads=request.threads,
        progress=request.progress,
        cache_dir=request.cache_dir,
        yes=request.yes,
        overwrite=True,  # a cell is only ever computed when it has no result.json
        real=True if request.real is None and request.whole_dataset else request.real,  # the pool is computed anyway
        ddrs_weight=request.ddrs_weight,
    )
    cells: list[Cell] = []
    normalised: dict[str, dict[str, Any]] = {}
    for method in methods:
        for ipc in ipcs:
            name = cell_name(method, ipc)
            base = dataclasses.replace(common, method=method, ipc=ipc, options=per_method[method])
            resolved = _cell_run(request, base, name)
            normalised[method] = {key: getattr(resolved.options, key) for key in per_method[method]}
            if name not in exclude:
                cells.append(Cell(name, method, ipc, resolved))
    baseline = baseline_method()
    if request.whole_dataset:
        whole = dataclasses.replace(common, method=baseline, ipc=1, baseline=False, whole_dataset=True)
        cells.append(Cell(WHOLE_DATASET, WHOLE_DATASET, None, _cell_run(request, whole, WHOLE_DATASET)))
    first = cells[0].run if cells else _cell_run(request, common, grid[0])
    identity = {
        "methods": methods,
        "dataset": request.dataset,
        "ipcs": ipcs,
        "eval_models": first.models,
        "protocol": {
            "name": first.protocol.name,
            "num_models": first.protocol.num_models,
            "epochs": first.protocol.epochs,
        },
        "iterations": request.iterations,
        "options": normalised,
        "whole_dataset": bool(request.whole_dataset),
        "exclude": exclude,
        "seed": request.seed,
        "real": request.real,
        "ddrs_weight": float(request.ddrs_weight),
    }
    identity = json.loads(json.dumps(identity, default=str))  # compare as it reads back from bench.json
    return BenchPlan(identity=identity, cells=cells, output=Path(request.output), baseline_method=baseline)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in _unique([*new, *old]) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now" for k in keys)


def _read_manifest(path: Path, overwrite: bool) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if not overwrite:
            raise UserError(f"{path} is unreadable ({exc}); pass --overwrite to start this bench again") from exc
        return {}


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
        old = _read_manifest(manifest_path, request.overwrite)
        if old.get("request") != bench_plan.identity and not request.overwrite:
            differences = _differences(old.get("request") or {}, bench_plan.identity)
            raise UserError(
                f"bench directory {str(output)!r} holds a different request ({differences}). Choose another "
                "--output, or pass --overwrite to discard its results and compute every cell again."
            )
    elif user_files(output):  # (temporaries of a killed write do not count)
        # Never clear a folder that is not a bench, not even with --overwrite.
        raise UserError(
            f"--output {str(output)!r} already holds files but no {MANIFEST}: it is not a bench directory. "
            "Choose a new or empty --output."
        )
    ensure_writable_dir(output)
    if request.overwrite:
        for cell in bench_plan.cells:
            cell.rundir.discard()  # a checkpoint of the old request must not be resumed either
        for name in DERIVED_FILES:
            (output / name).unlink(missing_ok=True)
    if old is None or old.get("request") != bench_plan.identity or request.overwrite:
        write_json_atomic(
            manifest_path,
            {
                "schema_version": BENCH_SCHEMA_VERSION,
                "request": bench_plan.identity,
                "baseline_method": bench_plan.baseline_method,
                "cells": [cell.to_dict() for cell in bench_plan.cells],
                "command": command_line(),
                "environment": {
                    "data_root": str(request.data_root) if request.data_root else None,
                    "device": request.device,
                    "threads": request.threads,
                },
            },
        )


def _read_cell(cell: Cell) -> dict[str, Any]:
    """Read back a finished cell, checking it answers this cell's request."""
    record = cell.rundir.read_result()
    if record is None:
        raise UserError(f"{cell.rundir.result} is unreadable; delete it to recompute that cell")
    protocol = (record.get("evaluation") or {}).get("protocol") or {}
    found = {
        "method": (record.get("method") or {}).get("id"),
        "dataset": record.get("dataset"),
        "ipc": record.get("ipc"),
        "models": sorted((record.get("evaluation") or {}).get("by_model") or {}),
        "num_models": protocol.get("num_models"),
        "epochs": protocol.get("epochs"),
    }
    run = cell.run
    wanted = {
        "method": run.request.method,
        "dataset": run.request.dataset,
        "ipc": run.request.ipc,
        "models": sorted(run.models),
        "num_models": run.protocol.num_models,
        "epochs": run.protocol.epochs,
    }
    config = record.get("config") or {}
    found["zca"], wanted["zca"] = config.get("zca"), run.zca
    found["seed"], wanted["seed"] = config.get("seed"), run.request.seed
    # The settings the cell was computed with against what its card and flags resolve to now (a card
    # changed since, say); an option the record predates is not compared.
    options = dataclasses.asdict(run.options) if dataclasses.is_dataclass(run.options) else {}
    now = json.loads(json.dumps(options, default=str))
    then = config.get("options") or {}
    for key in sorted(set(now) & set(then)):
        found[f"option {key}"], wanted[f"option {key}"] = then[key], now[key]
    if found != wanted:
        raise UserError(
            f"{cell.rundir.result} answers another request ({_differences(found, wanted)}); "
            "delete that cell directory, or pass --overwrite to recompute every cell"
        )
    return record


def _cell_task(run: ResolvedRun) -> None:
    """One cell as an executor task: a normal run, on the device as its worker sees it."""
    runner.run(dataclasses.replace(run, device=device_here(run.device)))


def _for_worker(run: ResolvedRun) -> ResolvedRun:
    """``run`` for another process or node: absolute paths (its working directory differs), no bars.

    The data root and cache are pinned to this process's, so every worker reads the same files
    (on a cluster they are on a filesystem every node mounts at the same path).
    """
    from dcbench_tesla.data import default_cache_dir, default_data_root

    request = run.request
    output = run.rundir.path.absolute()
    request = dataclasses.replace(
        request,
        output=output,
        data_root=Path(request.data_root or default_data_root()).absolute(),
        cache_dir=Path(request.cache_dir or default_cache_dir()).absolute(),
        progress=False,
    )
    return dataclasses.replace(run, request=request, rundir=RunDir(output))


def _read_landed(cell: Cell) -> dict[str, Any]:
    """Read back a cell whose task finished (on a cluster: from the shared filesystem)."""
    if not cell.rundir.is_finished():
        raise UserError(
            f"cell {cell.name} finished but {cell.rundir.result} is not here: the bench directory must be on "
            "a filesystem that every node of the cluster shares, at the same path"
        )
    return _read_cell(cell)


def run_cells(bench_plan: BenchPlan) -> dict[str, dict[str, Any]]:
    """Run every cell that has no ``result.json``; read back the others. Returns records by cell.

    Each cell to compute is one task of the command's executor (:mod:`dcbench_tesla.executors`):
    locally one after another in this process, on Ray side by side. A cell's run writes its own
    run directory atomically; this process reads each ``result.json`` back as its task completes.
    Task logs go to ``<bench>/logs/<cell>.log``.

    Raises:
        UserError: a cell stopped the bench (locally the first error stops it, as Ctrl-C does).
        TaskFailures: cells that failed on a remote executor, after every other cell landed.
    """
    executor = current_executor()
    records: dict[str, dict[str, Any]] = {}
    total = len(bench_plan.cells)
    tasks: list[Task] = []
    for index, cell in enumerate(bench_plan.cells, start=1):
        if cell.rundir.is_finished():
            print(f"[{index}/{total}] {cell.name}: done earlier, read back from {cell.rundir.result}")
            records[cell.name] = _read_cell(cell)
            cell.rundir.remove_stale_lock()  # a kill after its result was written leaves one
            continue
        run = cell.run
        if cell.rundir.has_checkpoint():
            state = "interrupted earlier, resuming from its checkpoint"
            run = run.for_resume()
        else:
            started = cell.rundir.path.is_dir() and any(cell.rundir.path.iterdir())
            state = "interrupted earlier, computing again" if started else "computing"
        run = _for_worker(run) if executor.remote else run
        message = f"[{index}/{total}] {cell.name}: {state}"
        tasks.append(
            Task(cell.name, _cell_task, (run,), device=str(run.device), threads=run.request.threads, message=message)
        )
    cells = {cell.name: cell for cell in bench_plan.cells}
    progress = executor.remote and all(cell.run.request.progress for cell in bench_plan.cells)
    failures = []
    try:
        for outcome in executor.map(tasks, desc="cells", progress=progress, log_dir=bench_plan.output / "logs"):
            if outcome.ok:
                records[outcome.task.name] = _read_landed(cells[outcome.task.name])
            else:
                failures.append(outcome)
    except (KeyboardInterrupt, UserError):  # Ctrl-C, or a run stopped with a message
        unfinished = [task.name for task in tasks if task.name not in records]
        where = (
            f"in cell {unfinished[0]}"
            if unfinished and not executor.remote
            else f"with {', '.join(unfinished)} unfinished"
        )
        print(
            f"\nbench stopped {where}; finished cells are kept, and the same command again computes only "
            "the missing ones",
            file=sys.stderr,
        )
        raise
    if failures:
        advice = "; the other cells are kept and tabulated, and the same command again computes only the missing ones"
        raise TaskFailures(failures, total=len(tasks), what="cells", advice=advice)
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
            ``overwrite``, ``data_root``, ``device``, ``threads``, ``progress``, ``cache_dir``, ``real``,
            ``ddrs_weight``).

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
    try:
        run_cells(bench_plan)
    except TaskFailures:
        write_tables(bench_plan.output)  # the cells that landed
        raise
    written = write_tables(bench_plan.output)
    for path in written:
        print(f"wrote {path}")
    return results_frame(bench_plan.output)
