"""``dcbench tune``: search a method's options on one (dataset, IPC) with Optuna, scored on validation only.

A study directory holds::

    tune.json                the request (compared on every re-run) and, once trials finish, the best one
    study.db                 the Optuna study (SQLite): a re-run continues it
    trials/<n>/              trial n: a normal run directory (see :mod:`dcbench_tesla.run.rundir`)
    trials.csv               one row per trial: state, validation accuracy, parameters, time, run directory
    history.png              the optimisation history (every trial and the best so far)
    best.toml                the best trial's options as a flat card: ``dcbench run --config best.toml``

Every trial is a :class:`~dcbench_tesla.run.request.RunRequest` resolved by
:func:`~dcbench_tesla.run.request.resolve`: the fixed part is the run flags given to ``tune``, the
sampled options are added as flags. Trials score their final set on the validation split
(``eval_split="val"``) and skip the random-subset and whole-dataset evaluations, so a tune never
reads the test split. The TPE sampler is seeded (``seed`` + trials already in the study), and the
median pruner is fed the ``--eval-every`` validation accuracy of each trial through ``on_eval`` (from
its second report on).

``--trials N`` is the number of finished (complete or pruned) trials the study should hold, so the
same command again does nothing more, and a larger N extends the study. A tune killed mid-trial
(SIGKILL) leaves that trial RUNNING in the storage; the next run marks it failed and queues its
parameters again, resuming its run directory from its checkpoint when it has one. Trials are tasks of
the command's executor: ``--parallel N`` asks for N trials at a time, which ``--executor ray`` runs side
by side (each worker reopens the study's SQLite file, so the study directory must be on a filesystem
every node shares); the local executor runs them one after the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import DivergenceError, Interrupted, UserError
from dcbench_tesla.files import ensure_writable_dir, write_json_atomic, write_text_atomic
from dcbench_tesla.run.request import ResolvedRun, RunRequest, resolve
from dcbench_tesla.run.rundir import RunDir

TUNE_SCHEMA_VERSION = 1
INSTALL_HINT = "pip install 'dcbench-tesla[tune]'"
#: Options searched when no ``--space`` is given (those the method's ``Config`` has and ``--set`` leaves free).
DEFAULT_SPACE_KEYS = ("lr_img", "lr_lr", "lr_teacher", "syn_steps", "max_start_epoch", "expert_epochs", "batch_syn")
#: Trials that fail in a row before the study stops (a systematic error, not a bad setting).
MAX_FAILURES_IN_A_ROW = 3


def require_optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        UserError: Optuna is not installed (naming the extra that installs it).
    """
    try:
        import optuna
    except ImportError:
        raise UserError(f"dcbench tune needs Optuna, which is not installed: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Dimension:
    """One searched option: an int or float range (optionally log-scaled) or a list of choices."""

    name: str
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this option's value for ``trial``."""
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        """``"lr_img in [10, 1000] (log)"`` or ``"lr_teacher in {0.005, 0.01}"``."""
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


def _field_kind(config_cls: type, key: str) -> str:
    """``"int"``, ``"float"`` or ``"categorical"`` for an option's annotated type (Optional unwrapped)."""
    hint = typing.get_type_hints(config_cls)[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if bool in args:
        return "categorical"
    if int in args:
        return "int"
    if float in args:
        return "float"
    return "categorical"


def parse_space(entries: list[str], config_cls: type, owner: str) -> dict[str, Dimension]:
    """Parse ``--space KEY=LOW:HIGH[:log]`` and ``--space KEY=a,b,c`` entries.

    Raises:
        UserError: a malformed entry, an unknown option, a repeated key, bounds that are not numbers
            of the option's type, ``LOW >= HIGH``, or a log range that is not positive.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    space: dict[str, Dimension] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise UserError(f"--space expects KEY=LOW:HIGH[:log] or KEY=a,b,c, got {entry!r}")
        if key not in fields:
            raise UserError(f"--space {entry!r}: {owner} has no option {key!r}. Options: {', '.join(sorted(fields))}")
        if key in space:
            raise UserError(f"--space names {key!r} twice")
        space[key] = _dimension(key, value.strip(), _field_kind(config_cls, key), entry)
    return space


def _dimension(key: str, value: str, kind: str, entry: str) -> Dimension:
    if "," in value:
        choices = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        if len(choices) < 2:
            raise UserError(f"--space {entry!r}: give at least two choices (a fixed value is --set {key}=VALUE)")
        return Dimension(key, "categorical", choices=choices)
    parts = value.split(":")
    log = len(parts) == 3 and parts[2].strip().lower() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise UserError(f"--space {entry!r}: expected KEY=LOW:HIGH, KEY=LOW:HIGH:log or KEY=a,b,c")
    if kind == "categorical":
        raise UserError(f"--space {entry!r}: {key!r} is not a number; list its choices as {key}=a,b,c")
    cast = int if kind == "int" else float
    try:
        low, high = cast(parts[0].strip()), cast(parts[1].strip())
    except ValueError:
        raise UserError(f"--space {entry!r}: the bounds of {key!r} must be {cast.__name__}s") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UserError(f"--space {entry!r}: LOW must be below HIGH (finite numbers)")
    if log and low <= 0:
        raise UserError(f"--space {entry!r}: a log range needs LOW > 0")
    return Dimension(key, kind, low=low, high=high, log=log)


def default_space(options: Any, fixed: set[str]) -> dict[str, Dimension]:
    """Ranges around the resolved options for the keys of :data:`DEFAULT_SPACE_KEYS` the method has.

    ``lr_img`` and ``lr_lr``: a decade either side (log); ``lr_teacher``: half, as is, double (a few
    values, since experts are trained at it and each value trains its own); ``syn_steps``: half to
    double; ``max_start_epoch``: half to as is and ``expert_epochs``: one either side (so their sum
    stays near the experts' length); ``batch_syn``: half to double when it is a number. Keys given
    with ``--set`` are not searched.
    """
    values = dataclasses.asdict(options)
    space: dict[str, Dimension] = {}
    for key in DEFAULT_SPACE_KEYS:
        value = values.get(key)
        if key not in values or key in fixed or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value <= 0:
            continue
        if key in ("lr_img", "lr_lr"):
            space[key] = Dimension(key, "float", low=value / 10, high=value * 10, log=True)
        elif key == "lr_teacher":
            space[key] = Dimension(key, "categorical", choices=(value / 2, value, value * 2))
        elif key in ("syn_steps", "batch_syn"):
            space[key] = Dimension(key, "int", low=max(1, value // 2), high=max(2, 2 * value))
        elif key == "max_start_epoch":
            space[key] = Dimension(key, "int", low=max(1, value // 2), high=max(2, value))
        elif key == "expert_epochs":
            space[key] = Dimension(key, "int", low=max(1, value - 1), high=value + 1)
    return space


@dataclass
class TuneRequest:
    """What ``dcbench tune`` asks for.

    Attributes:
        base: The fixed part of every trial (every ``run`` flag); ``base.output`` is the study directory
            [``tunes/<method>-<dataset>-ipc<N>-seed<S>``], ``base.overwrite`` discards a study there.
        trials: Finished (complete or pruned) trials the study should hold.
        timeout_s: Start no trial after this many seconds of this invocation (None: no limit).
        space: ``--space`` entries (empty: :func:`default_space`).
        parallel: Trials asked for at a time and run side by side as tasks of the command's executor
            (with the local executor they still run one after the other).
    """

    base: RunRequest
    trials: int = 20
    timeout_s: float | None = None
    space: list[str] = field(default_factory=list)
    parallel: int = 1

    @property
    def output(self) -> Path:
        """The study directory."""
        b = self.base
        return Path(b.output) if b.output else Path("tunes") / f"{b.method}-{b.dataset}-ipc{b.ipc}-seed{b.seed}"


@dataclass
class TunePlan:
    """A validated :class:`TuneRequest`: the resolved fixed part, the space and the study's identity."""

    request: TuneRequest
    base: RunRequest
    resolved: ResolvedRun
    space: dict[str, Dimension]
    identity: dict[str, Any]

    @property
    def output(self) -> Path:
        """The study directory."""
        return self.request.output

    def trial_request(self, number: int, params: dict[str, Any], on_eval: Any, resume_from: Path | None) -> RunRequest:
        """The run of trial ``number``: the fixed part plus ``params`` as flags, scored on validation."""
        resume = resume_from is not None and RunDir(resume_from).has_checkpoint()
        return dataclasses.replace(
            self.base,
            options={**self.base.options, **{k: str(v) for k, v in params.items()}},
            output=resume_from if resume else self.output / "trials" / str(number),
            overwrite=not resume,
            resume=resume,
            eval_split="val",
            baseline=False,
            real=False,
            whole_dataset=False,
            on_eval=on_eval,
        )


def plan_tune(request: TuneRequest) -> TunePlan:
    """Validate the request before any file or trial: the fixed part, the space, the budget.

    Raises:
        UserError: anything ``dcbench run`` would refuse, a bad ``--space``, a searched key also given
            with ``--set``, nothing to search, or a bad budget.
    """
    from dcbench_tesla.method import distiller_class

    if request.trials < 1:
        raise UserError(f"--trials must be at least 1, got {request.trials}")
    if request.timeout_s is not None and not request.timeout_s > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {request.timeout_s}")
    probe = dataclasses.replace(request.base, output=request.output / "trials" / "0", overwrite=True, resume=False)
    resolved = resolve(probe)
    config_cls = distiller_class(resolved.spec).Config
    fixed = set(resolved.layers["flags"]) | set((resolved.layers["config_file"] or {}).get("options", {}))
    owner = f"method {request.base.method!r}"
    space = parse_space(request.space, config_cls, owner) if request.space else default_space(resolved.options, fixed)
    both = sorted(set(space) & fixed)
    if both:
        raise UserError(f"{', '.join(both)}: given with --set/--config/--iterations and searched by --space; pick one")
    if not space:
        raise UserError(f"nothing to search for {owner}: give --space KEY=LOW:HIGH[:log] or KEY=a,b,c")
    for dim in space.values():  # every bound and choice must build the method's options
        for value in (dim.low, dim.high) if dim.kind != "categorical" else dim.choices:
            resolve(dataclasses.replace(probe, options={**probe.options, dim.name: str(value)}))
    iterations = int(getattr(resolved.options, "iterations", 0))
    eval_every = request.base.eval_every or (max(1, iterations // 4) if iterations else 0)
    base = dataclasses.replace(request.base, eval_every=eval_every)
    identity = {
        "method": request.base.method,
        "dataset": request.base.dataset,
        "ipc": request.base.ipc,
        "seed": request.base.seed,
        "zca": resolved.zca,
        "fixed": {k: v for k, v in resolved.overrides.items() if k in fixed},
        "space": {name: dataclasses.asdict(dim) for name, dim in space.items()},
        "eval_every": eval_every,
        "protocol": dataclasses.asdict(resolved.protocol),
        "models": resolved.models,
        "eval_lr": request.base.eval_lr,
    }
    identity = json.loads(json.dumps(identity, default=str))
    return TunePlan(request=request, base=base, resolved=resolved, space=space, identity=identity)


@contextlib.contextmanager
def study_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study directory (released when the process ends, even by SIGKILL).

    Raises:
        UserError: another ``dcbench tune`` works in this directory.
    """
    import fcntl

    with open(output / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another dcbench tune is running in {str(output)!r}; wait for it or use --output"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_study_dir(tune_plan: TunePlan) -> None:
    """Check the directory can hold this study (same request, or ``--overwrite``); write ``tune.json``.

    Raises:
        UserError: the directory holds another request's study (without ``--overwrite``) or files that
            are not a study (never cleared, not even with ``--overwrite``).
    """
    output = tune_plan.output
    manifest = output / "tune.json"
    overwrite = tune_plan.request.base.overwrite
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {str(output)!r} exists and is not a directory")
    old = RunDir(output).read_json(manifest) if manifest.is_file() else None
    if old is None and output.is_dir() and any(p.name != ".lock" for p in output.iterdir()):
        raise UserError(f"--output {str(output)!r} holds files but no tune.json: it is not a study. Choose another.")
    if old is not None and old.get("request") != tune_plan.identity:
        if not overwrite:
            raise UserError(
                f"{str(output)!r} holds a study of another request; run the same command as before to continue it, "
                "choose another --output, or pass --overwrite to discard it"
            )
    if old is not None and overwrite:
        for name in ("study.db", "trials.csv", "history.png", "best.toml"):
            (output / name).unlink(missing_ok=True)
        shutil.rmtree(output / "trials", ignore_errors=True)
        old = None
    ensure_writable_dir(output)
    if old is None:
        write_json_atomic(
            manifest,
            {
                "schema_version": TUNE_SCHEMA_VERSION,
                "request": tune_plan.identity,
                "command": " ".join(["dcbench", *sys.argv[1:]]),
            },
        )


def _requeue_interrupted(study: Any, optuna: Any) -> list[int]:
    """Fail the trials a killed process left RUNNING; queue their parameters (and Ctrl-C'd trials') again.

    Each is queued once, with its run directory to resume from. Returns the requeued trial numbers.
    """
    state = optuna.trial.TrialState
    requeued = set(study.user_attrs.get("requeued", []))
    again = []
    for trial in study.get_trials(deepcopy=False):
        stale = trial.state == state.RUNNING
        stopped = trial.state == state.FAIL and trial.user_attrs.get("interrupted")
        if stale:
            study.tell(trial.number, state=state.FAIL, skip_if_finished=True)
        if (stale or stopped) and trial.number not in requeued:
            attrs = {"resume_from": trial.user_attrs.get("run_dir"), "redo_of": trial.number}
            study.enqueue_trial(dict(trial.params), user_attrs=attrs)
            requeued.add(trial.number)
            again.append(trial.number)
    study.set_user_attr("requeued", sorted(requeued))
    return again


def _finished(study: Any, optuna: Any) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


STUDY_NAME = "dcbench-tune"


@dataclass(frozen=True)
class StudyHandle:
    """How a trial task reopens the study (a worker process has its own connection): storage, pruner settings."""

    storage: str
    pruner_startup_trials: int
    pruner_warmup_steps: int

    def load(self, optuna: Any) -> Any:
        """The study, with the driver's pruner."""
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=self.pruner_startup_trials, n_warmup_steps=self.pruner_warmup_steps
        )
        return optuna.load_study(study_name=STUDY_NAME, storage=self.storage, pruner=pruner)


def trial_task(tune_plan: TunePlan, handle: StudyHandle, trial_id: int, request: RunRequest) -> dict[str, Any]:
    """One trial as an executor task: a normal run scored on validation, reporting to the pruner.

    Runs where the executor puts it (this process, or a Ray worker reading the study's SQLite file on
    the shared output directory). Returns the outcome for the driver to tell the study.

    Raises:
        Interrupted: Ctrl-C / SIGTERM (the driver marks the trial interrupted and queues it again).
    """
    from dcbench_tesla.run import runner

    optuna = require_optuna()
    trial = optuna.trial.Trial(handle.load(optuna), trial_id)

    def report(iteration: int, accuracy: float) -> None:
        trial.report(accuracy, iteration)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at iteration {iteration} (validation accuracy {accuracy:.4f})")

    try:
        record = runner.run(resolve(dataclasses.replace(request, on_eval=report)))
    except optuna.TrialPruned as exc:
        return {"state": "pruned", "note": str(exc)}
    except (Interrupted, KeyboardInterrupt):  # before UserError (Interrupted is one): the driver handles it
        raise
    except UserError as exc:  # a setting that diverges or that the method refuses: a failed trial
        kind = "diverged" if isinstance(exc, DivergenceError) else "refused"
        return {"state": "failed", "note": f"{kind}: {str(exc).splitlines()[0]}"}
    first = record["evaluation"]["by_model"][tune_plan.resolved.models[0]]
    return {"state": "complete", "value": first["mean"], "std": first["std"]}


def run_trials(tune_plan: TunePlan, study: Any, optuna: Any, handle: StudyHandle, count: int) -> list[Any]:
    """Ask the study for ``count`` trials, run them as tasks of the command's executor, tell each outcome.

    With the local executor they run one after the other in this process; with Ray, side by side.
    """
    from dcbench_tesla.executors import Task, current_executor

    trials, tasks = [], []
    for _ in range(count):
        trial = study.ask()
        params = {name: dim.suggest(trial) for name, dim in tune_plan.space.items()}
        resume_from = trial.user_attrs.get("resume_from")
        request = tune_plan.trial_request(trial.number, params, None, Path(resume_from) if resume_from else None)
        if current_executor().remote:
            request = dataclasses.replace(request, output=Path(request.output).absolute(), progress=False)
        trial.set_user_attr("run_dir", str(request.output))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        message = f"\n[trial {trial.number}] {shown}"
        trials.append(trial)
        tasks.append(
            Task(f"trial-{trial.number}", trial_task, (tune_plan, handle, trial._trial_id, request),
                 device=str(tune_plan.resolved.device), threads=request.threads, message=message)
        )  # fmt: skip
    frozen = []
    try:
        for outcome in current_executor().map(tasks, desc="trials", progress=False, log_dir=tune_plan.output / "logs"):
            trial = trials[outcome.index]
            result = outcome.result() if outcome.ok else {"state": "failed", "note": outcome.summary()}
            frozen.append(_tell(study, optuna, trial, result))
    except (Interrupted, KeyboardInterrupt):
        for trial in trials:
            if study.trials[trial.number].state == optuna.trial.TrialState.RUNNING:
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    return frozen


def _tell(study: Any, optuna: Any, trial: Any, result: dict[str, Any]) -> Any:
    state = optuna.trial.TrialState
    if result["state"] == "complete":
        trial.set_user_attr("val_acc_std", result["std"])
        return study.tell(trial, result["value"])
    trial.set_user_attr("note", result["note"])
    if result["state"] == "pruned":
        return study.tell(trial, state=state.PRUNED)
    print(f"[trial {trial.number}] failed ({result['note']})")
    return study.tell(trial, state=state.FAIL)


def tune(request: TuneRequest) -> dict[str, Any]:
    """Run (or continue) a study; write ``trials.csv``, ``history.png``, ``best.toml``; return its summary.

    Raises:
        UserError: Optuna missing, any invalid input (before any file is written), another study in
            the directory, or every trial failing in a row (:data:`MAX_FAILURES_IN_A_ROW`).
        Interrupted: Ctrl-C / SIGTERM (the trial is queued again by the next run).
    """
    optuna = require_optuna()
    from dcbench_tesla.checks import set_threads

    tune_plan = plan_tune(request)
    set_threads(request.base.threads)
    tune_plan.resolved.load_dataset().split("val")  # a dataset without validation images stops here
    output = tune_plan.output
    open_study_dir(tune_plan)
    with study_lock(output):
        storage = f"sqlite:///{(output / 'study.db').resolve()}"
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            direction="maximize",
            load_if_exists=True,
        )
        again = _requeue_interrupted(study, optuna)
        if again:
            print(f"trials {', '.join(map(str, again))} were interrupted: running their parameters again")
        start_trials = len(study.trials)
        study.sampler = optuna.samplers.TPESampler(
            seed=request.base.seed + start_trials, n_startup_trials=max(1, min(10, request.trials // 4))
        )
        # no pruning on a trial's first report (a quarter of the way by default): too early to tell
        warmup = tune_plan.base.eval_every
        handle = StudyHandle(storage, max(3, request.trials // 4), warmup)
        study.pruner = handle.load(optuna).pruner
        started, failures = time.monotonic(), 0
        try:
            while _finished(study, optuna) < request.trials:
                if request.timeout_s is not None and time.monotonic() - started >= request.timeout_s:
                    print(f"--timeout {request.timeout_s:g} s reached: no further trial started")
                    break
                count = min(request.parallel, request.trials - _finished(study, optuna))
                for frozen in run_trials(tune_plan, study, optuna, handle, count):
                    failures = failures + 1 if frozen.state == optuna.trial.TrialState.FAIL else 0
                write_outputs(tune_plan, study, optuna)
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise UserError(
                        f"{failures} trials failed in a row (see the 'note' column of {output / 'trials.csv'}); "
                        "narrow --space or fix the fixed settings"
                    )
        finally:
            summary = write_outputs(tune_plan, study, optuna)
    print(summary["text"])
    return summary


# -- outputs -----------------------------------------------------------------------------------
def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, parameters, duration, last report, run directory, note."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        intermediate = trial.intermediate_values
        last = max(intermediate) if intermediate else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "val_acc": trial.value if trial.state.name == "COMPLETE" else None,  # Optuna gives pruned ones one
                "val_acc_std": trial.user_attrs.get("val_acc_std"),
                **{f"param_{k}": v for k, v in trial.params.items()},
                "duration_s": None if trial.duration is None else round(trial.duration.total_seconds(), 2),
                "last_report_iteration": last,
                "last_report_val_acc": None if last is None else intermediate[last],
                "run_dir": trial.user_attrs.get("run_dir"),
                "redo_of": trial.user_attrs.get("redo_of"),
                "note": trial.user_attrs.get("note"),
            }
        )
    return rows


def card_text(tune_plan: TunePlan, best: Any, finished: int) -> str:
    """The best trial's options as a flat TOML card (fixed options and the searched ones)."""
    config = RunDir(best.user_attrs["run_dir"]).read_json(RunDir(best.user_attrs["run_dir"]).config) or {}
    options = config.get("options", {})
    keys = [*tune_plan.identity["fixed"], *[k for k in tune_plan.space if k not in tune_plan.identity["fixed"]]]
    b = tune_plan.base
    lines = [
        f"# dcbench tune: {b.method} on {b.dataset}, IPC {b.ipc}, seed {b.seed}, zca {tune_plan.resolved.zca}",
        f"# best of {finished} finished trials: trial {best.number}, validation accuracy "
        f"{100 * best.value:.2f} % ({tune_plan.resolved.models[0]}, protocol {tune_plan.resolved.protocol.name}, "
        f"{tune_plan.resolved.protocol.num_models} model(s) x {tune_plan.resolved.protocol.epochs} epochs)",
        f"# searched: {'; '.join(dim.describe() for dim in tune_plan.space.values())}",
        f"# use: dcbench run --method {b.method} --dataset {b.dataset} --ipc {b.ipc} --config best.toml"
        + ("" if b.zca is None else " --zca" if b.zca else " --no-zca"),
    ]
    lines += [f"{key} = {_toml_value(options.get(key))}" for key in keys]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'  # the option coercion reads "none" as None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def history_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Validation accuracy of every trial (pruned ones at their last report) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(r["number"], 100 * r["val_acc"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [
        (r["number"], 100 * r["last_report_val_acc"])
        for r in rows
        if r["state"] == "PRUNED" and r["last_report_val_acc"] is not None
    ]
    if done:
        ax.scatter(*zip(*done, strict=True), label="complete", color="tab:blue")
        best, line = -math.inf, []
        for number, value in sorted(done):
            best = max(best, value)
            line.append((number, best))
        ax.step(*zip(*line, strict=True), where="post", label="best so far", color="tab:red")
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), label="pruned (last report)", marker="x", color="tab:gray")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    with contextlib.ExitStack() as stack:
        from dcbench_tesla.files import atomic_path

        tmp = stack.enter_context(atomic_path(path))
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_outputs(tune_plan: TunePlan, study: Any, optuna: Any) -> dict[str, Any]:
    """Write ``trials.csv``, ``history.png``, ``best.toml`` and the best trial into ``tune.json``."""
    import pandas as pd

    output = tune_plan.output
    rows = trial_rows(study)
    write_text_atomic(output / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    b = tune_plan.base
    history_plot(rows, output / "history.png", f"dcbench tune: {b.method} on {b.dataset}, IPC {b.ipc} (validation)")
    finished = _finished(study, optuna)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL")}
    summary: dict[str, Any] = {"trials": counts, "best": None, "output": str(output)}
    text = [f"study {output}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"]
    if complete:
        best = max(complete, key=lambda t: t.value)
        write_text_atomic(output / "best.toml", card_text(tune_plan, best, finished))
        summary["best"] = {"number": best.number, "val_acc": best.value, "params": best.params}
        text.append(f"best: trial {best.number}, validation accuracy {100 * best.value:.2f} % with {best.params}")
        text.append(f"card: {output / 'best.toml'} (dcbench run --config {output / 'best.toml'} ...)")
    manifest = RunDir(output).read_json(output / "tune.json") or {}
    write_json_atomic(output / "tune.json", {**manifest, "result": summary})
    summary["text"] = "\n".join(text)
    return summary
