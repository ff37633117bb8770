"""``dcbench run``: resolve the request, say what will happen, distil, evaluate, record.

The runner never branches on a method's name: what it needs of a method comes from its spec
(its evaluation-lr rule, its role, its cards) and its distiller (options, work estimate, OOM advice).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import Distiller, RunContext
from dcbench_tesla.errors import Interrupted, UserError
from dcbench_tesla.evaluation import evaluate_images, format_accuracy
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.method import build_distiller
from dcbench_tesla.protocols import evaluation_lr
from dcbench_tesla.run import estimate
from dcbench_tesla.run.loop import run_episode
from dcbench_tesla.run.request import ResolvedRun, RunRequest, resolve
from dcbench_tesla.run.rundir import RESULT_SCHEMA_VERSION, ResultRecord
from dcbench_tesla.scores import FairEvaluation, evaluate_with_scores, format_scores, same_rule_labels
from dcbench_tesla.synthetic import SyntheticSet
from dcbench_tesla.wrappers import Checkpoint, EvaluateEvery, FiniteInfo, MetricsLog, ProgressBar, Wrapper, unwrap

if TYPE_CHECKING:
    from torch import Tensor


class Phases:
    """Wall-clock seconds of each phase of a run, for the summary at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Any:
        """Time the block as ``name`` (added up over repeated blocks)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def line(self) -> str:
        """``"time: load 0.3 s, set-up 12 s, ... (total 80 s)"``."""
        parts = [f"{name} {estimate.human_seconds(s)}" for name, s in self.seconds.items()]
        return f"time: {', '.join(parts)} (total {estimate.human_seconds(sum(self.seconds.values()))})"


class TimeReset(Wrapper):
    """Times ``reset`` (the method's set-up: expert training and the like) as its own phase."""

    def __init__(self, env: Distiller, phases: Phases) -> None:  # noqa: D107
        super().__init__(env)
        self.phases = phases

    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Reset inside the ``set-up`` phase; Ctrl-C there stops with the way to continue."""
        with self.phases.phase("set-up"):
            try:
                return self.env.reset(dataset, ipc, seed)
            except KeyboardInterrupt:
                raise Interrupted(
                    "interrupted during set-up, before iteration 1; what set-up finished (such as trained "
                    "experts, cached one by one) is kept. Continue with the same command (or with --resume)."
                ) from None


def run_context(run: ResolvedRun) -> RunContext:
    """The runtime settings the method gets (device, cache, progress)."""
    request = run.request
    cache = {"cache_dir": request.cache_dir} if request.cache_dir else {}
    return RunContext(device=run.device, progress=request.progress, **cache)


def periodic_evaluation(run: ResolvedRun, dataset: Dataset) -> Any:
    """``--eval-every``: one model of the first architecture on the current set, scored on validation.

    The figure is logged (``val_acc``) and passed to ``request.on_eval`` (``dcbench tune``'s pruner),
    never used to pick a set (the result is always the final set), and the test split is not read.
    """
    protocol = run.protocol.replace(num_models=1)
    request = run.request

    def evaluate(syn: SyntheticSet) -> dict[str, Any]:
        lr = evaluation_lr(syn.lr, run.spec.eval_lr, request.eval_lr, protocol)
        result = evaluate_images(
            syn.images, syn.labels, dataset, run.models[:1], lr, protocol, request.seed, run.device, split="val"
        )
        accuracy = result.by_model[run.models[0]].mean
        if request.on_eval is not None:
            request.on_eval(syn.iteration, accuracy)
        return {"val_acc": accuracy}

    return evaluate


def distil(
    run: ResolvedRun, dataset: Dataset, distiller: Distiller, phases: Phases
) -> tuple[SyntheticSet, Tensor | None]:
    """Wrap the method (finite check, periodic evaluation, log, checkpoint, progress) and run its episode.

    Returns:
        The synthetic set, and the labels its rule gives the random real subset (see
        :func:`~dcbench_tesla.scores.same_rule_labels`; None without ``request.baseline``), taken before
        the method is closed.
    """
    request = run.request
    env: Any = TimeReset(FiniteInfo(distiller), phases)
    if request.eval_every > 0:
        env = EvaluateEvery(env, request.eval_every, periodic_evaluation(run, dataset))
    env = MetricsLog(env, run.rundir.metrics, fresh=not run.resumes)
    checkpoint = env = Checkpoint(env, run.rundir.checkpoint, request.checkpoint_every, run.identity())
    total = distiller.iterations
    env = ProgressBar(env, total=total, enabled=request.progress, desc=f"distil {request.method}")
    try:
        run_episode(
            env,
            dataset,
            request.ipc,
            request.seed,
            total,
            checkpoint=checkpoint,
            resume=run.resumes,
            method=request.method,
            notice=print,
        )
        checkpoint.save()  # the finished episode: an interrupted evaluation resumes without distilling
        baseline_labels = (
            same_rule_labels(unwrap(env), dataset, request.ipc, request.seed, request.method)
            if request.baseline
            else None
        )
        return env.synthetic_set(), baseline_labels
    finally:
        env.close()


def check_exported_set(syn: Any, dataset: Dataset, method: str) -> None:
    """Refuse a set whose type, image shape or classes do not fit the dataset (plugins)."""
    if not isinstance(syn, SyntheticSet):
        raise UserError(f"method {method!r}: synthetic_set() returned {type(syn).__name__}, not a SyntheticSet")
    if tuple(syn.images.shape[1:]) != dataset.image_shape or syn.num_classes != dataset.num_classes:
        raise UserError(
            f"method {method!r} produced images of shape {tuple(syn.images.shape)} for {syn.num_classes} classes; "
            f"{dataset.name} needs (N, {', '.join(map(str, dataset.image_shape))}) and {dataset.num_classes} classes"
        )
    syn.validate()


def real_pool_wanted(run: ResolvedRun, dataset: Dataset) -> bool:
    """Whether to evaluate the whole training pool with hard labels: ``--real``/``--no-real``, else if cached.

    Without either flag the pool is evaluated only when its result is already cached; computing it
    once costs K models x epochs x the whole pool, far more than a small run (the header says how much).
    """
    request = run.request
    if request.whole_dataset or request.real is not None:
        return bool(request.whole_dataset or request.real)
    from dcbench_tesla.evaluation import whole_pool_cached

    split = request.eval_split  # type: ignore[assignment]
    return whole_pool_cached(dataset, run.models, run.protocol, request.seed, split=split, cache_dir=request.cache_dir)


def evaluate(
    run: ResolvedRun, dataset: Dataset, syn: SyntheticSet, baseline_labels: Tensor | None, real: bool
) -> FairEvaluation:
    """The set and everything its scores need (see :func:`~dcbench_tesla.scores.evaluate_with_scores`).

    The hard-label random subset is evaluated unless the method is the baseline itself; the subset
    under the set's own label rule whenever ``baseline_labels`` are given; the whole training pool
    (cached) unless ``--no-real`` (and always for ``--whole-dataset``). Scores ``request.eval_split``.
    """
    request, protocol = run.request, run.protocol
    return evaluate_with_scores(
        syn.images,
        syn.labels,
        evaluation_lr(syn.lr, run.spec.eval_lr, request.eval_lr, protocol),
        dataset,
        run.models,
        protocol,
        request.seed,
        run.device,
        ipc=request.ipc,
        same_rule_labels=baseline_labels,
        hard_baseline=request.baseline and not run.spec.is_baseline,
        real=real,
        split=request.eval_split,  # type: ignore[arg-type]
        cache_dir=request.cache_dir,
        progress=request.progress,
        ddrs_weight=request.ddrs_weight,
    )


def header(
    run: ResolvedRun, dataset: Dataset, distiller: Distiller, seconds: dict[str, float], step_s: dict[str, float]
) -> str:
    """What the run will do, printed before any work: method, card, changed options, output, estimates.

    ``seconds`` holds each phase's estimate; ``step_s`` each architecture's calibrated seconds per image-step.
    """
    request = run.request
    lines = [f"{request.method} on {request.dataset}, IPC {request.ipc}, seed {request.seed} -> {run.rundir}"]
    card = run.card
    if card is None:
        lines.append("  card: none for this dataset; the method's defaults")
    else:
        derived = (
            f" (derived: no card at IPC {request.ipc}; the nearest is IPC {card.ipc})"
            if card.ipc != request.ipc
            else ""
        )
        lines.append(f"  card: {card.dataset} IPC {card.ipc}{derived}; source: {card.source or 'not given'}")
    defaults = dataclasses.asdict(type(distiller.options)())
    changed = {k: v for k, v in dataclasses.asdict(distiller.options).items() if defaults.get(k) != v}
    if changed:
        lines.append("  options (not the defaults): " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    protocol = run.protocol
    lines.append(
        f"  evaluation: {protocol.name}, {protocol.num_models} model(s) x {protocol.epochs} epochs on "
        f"{', '.join(run.models)}; {len(dataset.train_images)} training images"
    )
    if seconds:
        parts = [f"{phase} ~{estimate.human_seconds(s)}" for phase, s in seconds.items() if s]
        speeds = ", ".join(f"{name} {1000 * s:.3f}" for name, s in step_s.items())
        lines.append(
            f"  estimated time: {', '.join(parts) or 'nothing to compute'} (calibrated here, ms per image-step: "
            f"{speeds}; an estimate)"
        )
    return "\n".join(lines)


def check_cost(
    run: ResolvedRun, dataset: Dataset, work: dict[str, float], seconds: dict[str, float], context: RunContext
) -> None:
    """Ask for ``--yes`` when a phase of the method (``work``, image-steps) is far above the dataset's cards."""
    name = run.request.dataset
    far = estimate.far_above_cards(work, estimate.card_work(run, dataset, context))
    if far:
        what = "; ".join(
            f"{phase} ~{estimate.human_seconds(seconds[phase])} ({ratio:.0f}x the largest card of {name})"
            for phase, ratio in far.items()
        )
        estimate.confirm_or_refuse(f"this run costs far more than the config cards of {name}: {what}", run.request.yes)


def run(target: RunRequest | ResolvedRun) -> ResultRecord:
    """Run one method on one dataset and IPC; write the run directory; return the result record."""
    from dcbench_tesla.checks import set_threads
    from dcbench_tesla.distiller import check_ipc

    run = target if isinstance(target, ResolvedRun) else resolve(target)
    request = run.request
    set_threads(request.threads)
    phases = Phases()
    with phases.phase("load"):
        dataset = run.load_dataset()
    check_ipc(dataset, request.ipc)
    context = run_context(run)
    distiller = build_distiller(run.spec, run.options, context)
    real = real_pool_wanted(run, dataset)
    work = distiller.estimate_work(dataset, request.ipc)
    step_s = estimate.calibrate([run.dataset.default_model, *run.models], dataset, run.device)
    eval_work = estimate.evaluation_work(run, dataset, real)
    seconds = estimate.phase_seconds(work, eval_work, step_s, run.dataset.default_model)
    print(header(run, dataset, distiller, seconds, step_s), flush=True)
    if not real and request.real is None:
        pool = estimate.seconds(estimate.whole_pool_work(run, dataset), step_s)
        print(
            f"  no HLR/DDRS: the whole training pool with hard labels is not cached yet; --real computes it once "
            f"(~{estimate.human_seconds(pool)}), then every run on this data reads it back"
        )
    check_cost(run, dataset, work, seconds, context)
    run.rundir.open(run.resumes)
    try:
        return _distil_evaluate_record(run, dataset, distiller, phases)
    finally:
        run.rundir.close()  # release the directory's lock as soon as the run ends


def _distil_evaluate_record(run: ResolvedRun, dataset: Dataset, distiller: Distiller, phases: Phases) -> ResultRecord:
    """The part of :func:`run` that works in the (locked) run directory."""
    import torch

    from dcbench_tesla.provenance import provenance

    request = run.request
    config = run.config_record(torch.get_num_threads())
    write_json_atomic(run.rundir.config, config)  # on resume: same identity, current evaluation settings
    start = time.perf_counter()
    syn, baseline_labels = distil(run, dataset, distiller, phases)
    phases.seconds["distillation"] = time.perf_counter() - start - phases.seconds.get("set-up", 0.0)
    check_exported_set(syn, dataset, request.method)
    syn.config = config
    syn.extra = {"versions": provenance(run.device)["versions"]}
    syn.save(run.rundir.synthetic_set)
    try:
        with phases.phase("evaluation"):
            fair = evaluate(run, dataset, syn, baseline_labels, real_pool_wanted(run, dataset))
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted during evaluation; the distilled set is saved. Continue with the same command plus "
            "--resume (it evaluates again without distilling)."
        ) from None
    records = fair.records()
    record: ResultRecord = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "method": run.spec.to_dict(),
        "dataset": request.dataset,
        "ipc": request.ipc,
        "seed": request.seed,
        "config": config,
        "iterations": syn.iteration,
        "eval_split": request.eval_split,
        "evaluation": records["evaluation"],
        "evaluation_hard_labels": records["evaluation_hard_labels"],
        "baseline": records["baseline"],
        "baseline_same_rule": records["baseline_same_rule"],
        "real_hard": records["real_hard"],
        "whole_dataset": records["real_hard"] if request.whole_dataset else None,
        "scores": records["scores"],
        "reference_accuracy": run.spec.reference_accuracy.get(request.dataset, {}).get(request.ipc),
        "synthetic_set": run.rundir.SYNTHETIC_SET,
        "provenance": {**provenance(run.device), "phase_seconds": phases.seconds},
    }
    write_json_atomic(run.rundir.result, record)
    run.rundir.checkpoint.unlink(missing_ok=True)  # finished: the result and the set are what is kept
    print(summary(run, fair))
    print(phases.line())
    return record


def summary(run: ResolvedRun, fair: FairEvaluation) -> str:
    """The lines ``dcbench run`` prints at the end (every accuracy with the lr it was trained with)."""
    request = run.request
    protocol = fair.evaluation.protocol
    lines = [
        f"{request.method} on {request.dataset}, IPC {request.ipc}, seed {request.seed} "
        f"({protocol.num_models} models x {protocol.epochs} epochs, protocol {protocol.name!r})",
        *score_lines(fair, "validation" if request.eval_split == "val" else "test"),
        f"run directory: {run.rundir}",
    ]
    return "\n".join(lines)


def score_lines(fair: FairEvaluation, split_name: str) -> list[str]:
    """Per architecture: the accuracy beside its baselines, then the label-robust scores (``run`` and ``eval``)."""
    lines = []
    for name, result in fair.evaluation.by_model.items():
        line = f"  {name}: {split_name} accuracy {format_accuracy(result)} %  (lr {result.lr:.4g})"
        if fair.baseline is not None:
            base = fair.baseline.by_model[name]
            line += f"   random real subset: {format_accuracy(base)} %  (lr {base.lr:.4g})"
        lines.append(line)
        parts = []
        if fair.evaluation_hard is not None:
            parts.append(f"hard labels: {format_accuracy(fair.evaluation_hard.by_model[name])} %")
        if fair.baseline_same_rule is not None:
            same = format_accuracy(fair.baseline_same_rule.by_model[name])
            parts.append(f"random subset, same label rule ({fair.same_rule_kind}): {same} %")
        if fair.real_hard is not None:
            parts.append(f"whole dataset: {format_accuracy(fair.real_hard.by_model[name])} %")
        if parts:
            lines.append("    " + "   ".join(parts))
        scores = fair.scores[name]
        if scores.hlr is not None or scores.ior is not None:
            lines.append(f"    {format_scores(scores)}")
    return lines
