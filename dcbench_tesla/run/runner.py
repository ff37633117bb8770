"""``dcbench run``: resolve the request, distil, evaluate, record.

The runner never branches on a method's name: what it needs of a method comes from its spec
(its evaluation lr rule, its role) and its distiller (options, OOM advice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import RunContext
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import evaluate_images, evaluation_lr, format_accuracy
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.method import build_distiller
from dcbench_tesla.run.loop import run_episode
from dcbench_tesla.run.request import ResolvedRun, RunRequest, resolve
from dcbench_tesla.run.rundir import RESULT_SCHEMA_VERSION, ResultRecord
from dcbench_tesla.scores import FairEvaluation, evaluate_with_scores, format_scores, same_rule_labels
from dcbench_tesla.synthetic import SyntheticSet
from dcbench_tesla.wrappers import Checkpoint, EvaluateEvery, FiniteInfo, MetricsLog, ProgressBar, unwrap

if TYPE_CHECKING:
    from torch import Tensor


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


def distil(run: ResolvedRun, dataset: Dataset) -> tuple[SyntheticSet, Tensor | None]:
    """Build the method, wrap it (finite check, periodic evaluation, log, checkpoint, progress) and run the episode.

    Returns:
        The synthetic set, and the labels its rule gives the random real subset (see
        :func:`~dcbench_tesla.scores.same_rule_labels`; None without ``request.baseline``), taken before
        the method is closed.
    """
    request = run.request
    context = RunContext(
        device=run.device,
        progress=request.progress,
        **({"cache_dir": request.cache_dir} if request.cache_dir else {}),
    )
    distiller = build_distiller(run.spec, run.options, context)
    env: Any = FiniteInfo(distiller)
    if request.eval_every > 0:
        env = EvaluateEvery(env, request.eval_every, periodic_evaluation(run, dataset))
    env = MetricsLog(env, run.rundir.metrics, fresh=not request.resume)
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
            resume=request.resume,
            method=request.method,
            notice=print,
        )
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


def evaluate(run: ResolvedRun, dataset: Dataset, syn: SyntheticSet, baseline_labels: Tensor | None) -> FairEvaluation:
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
        real=request.real or request.whole_dataset,
        split=request.eval_split,  # type: ignore[arg-type]
        cache_dir=request.cache_dir,
        progress=request.progress,
        ddrs_weight=request.ddrs_weight,
    )


def run(target: RunRequest | ResolvedRun) -> ResultRecord:
    """Run one method on one dataset and IPC; write the run directory; return the result record."""
    import torch

    from dcbench_tesla.checks import set_threads
    from dcbench_tesla.distiller import check_ipc
    from dcbench_tesla.provenance import provenance

    run = target if isinstance(target, ResolvedRun) else resolve(target)
    request = run.request
    set_threads(request.threads)
    if run.spec.config_cards and run.card is None:
        print(
            f"notice: no config card for {request.method} on {request.dataset} at IPC {request.ipc}; using its defaults"
        )
    dataset = run.load_dataset()
    check_ipc(dataset, request.ipc)
    run.rundir.open(request.resume)
    config = run.config_record(torch.get_num_threads())
    write_json_atomic(run.rundir.config, config)  # on resume: same identity, current evaluation settings
    syn, baseline_labels = distil(run, dataset)
    check_exported_set(syn, dataset, request.method)
    syn.config = config
    syn.extra = {"versions": provenance(run.device)["versions"]}
    syn.save(run.rundir.synthetic_set)

    fair = evaluate(run, dataset, syn, baseline_labels)
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
        "provenance": provenance(run.device),
    }
    write_json_atomic(run.rundir.result, record)
    print(summary(run, fair))
    return record


def summary(run: ResolvedRun, fair: FairEvaluation) -> str:
    """The lines ``dcbench run`` prints at the end."""
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
            line += f"   random real subset: {format_accuracy(fair.baseline.by_model[name])} %"
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
