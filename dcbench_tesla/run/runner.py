"""``dcbench run``: resolve the request, distil, evaluate, record.

The runner never branches on a method's name: what it needs of a method comes from its spec
(its evaluation lr rule, its role) and its distiller (options, OOM advice).
"""

from __future__ import annotations

from typing import Any

from dcbench_tesla.data import Dataset
from dcbench_tesla.distiller import RunContext
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import (
    EvaluationResult,
    evaluate_images,
    evaluation_lr,
    format_accuracy,
    random_real_subset,
)
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.method import build_distiller
from dcbench_tesla.run.loop import run_episode
from dcbench_tesla.run.request import ResolvedRun, RunRequest, resolve
from dcbench_tesla.run.rundir import RESULT_SCHEMA_VERSION, ResultRecord
from dcbench_tesla.synthetic import SyntheticSet
from dcbench_tesla.wrappers import Checkpoint, EvaluateEvery, FiniteInfo, MetricsLog, ProgressBar


def periodic_evaluation(run: ResolvedRun, dataset: Dataset) -> Any:
    """``--eval-every``: one model of the first architecture on the current set (watching only).

    The figure is logged, never used to pick a set (the result is always the final set).
    """
    protocol = run.protocol.replace(num_models=1)
    request = run.request

    def evaluate(syn: SyntheticSet) -> dict[str, Any]:
        lr = evaluation_lr(syn.lr, run.spec.eval_lr, request.eval_lr, protocol)
        result = evaluate_images(
            syn.images, syn.labels, dataset, run.models[:1], lr, protocol, request.seed, run.device
        )
        return {"eval_acc": result.by_model[run.models[0]].mean}

    return evaluate


def distil(run: ResolvedRun, dataset: Dataset) -> SyntheticSet:
    """Build the method, wrap it (finite check, periodic evaluation, log, checkpoint, progress) and run the episode."""
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
        return env.synthetic_set()
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


def evaluate(run: ResolvedRun, dataset: Dataset, syn: SyntheticSet) -> dict[str, EvaluationResult | None]:
    """The set, the random real subset beside it (unless the method is the baseline) and the whole dataset."""
    request, protocol = run.request, run.protocol
    lr = evaluation_lr(syn.lr, run.spec.eval_lr, request.eval_lr, protocol)
    common = (dataset, run.models)
    results: dict[str, EvaluationResult | None] = {"evaluation": None, "baseline": None, "whole_dataset": None}
    results["evaluation"] = evaluate_images(
        syn.images, syn.labels, *common, lr, protocol, request.seed, run.device, request.progress, "evaluate"
    )
    if request.baseline and not run.spec.is_baseline:
        images, labels = random_real_subset(dataset, request.ipc, request.seed)
        results["baseline"] = evaluate_images(
            images, labels, *common, lr, protocol, request.seed, run.device, request.progress, "baseline"
        )
    if request.whole_dataset:
        results["whole_dataset"] = evaluate_images(
            dataset.train_images,
            dataset.train_labels,
            *common,
            protocol.fixed_lr,
            protocol,
            request.seed,
            run.device,
            request.progress,
            "whole dataset",
        )
    return results


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
    syn = distil(run, dataset)
    check_exported_set(syn, dataset, request.method)
    syn.config = config
    syn.extra = {"versions": provenance(run.device)["versions"]}
    syn.save(run.rundir.synthetic_set)

    results = evaluate(run, dataset, syn)
    record: ResultRecord = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "method": run.spec.to_dict(),
        "dataset": request.dataset,
        "ipc": request.ipc,
        "seed": request.seed,
        "config": config,
        "iterations": syn.iteration,
        "evaluation": results["evaluation"].to_dict(),
        "baseline": results["baseline"].to_dict() if results["baseline"] else None,
        "whole_dataset": results["whole_dataset"].to_dict() if results["whole_dataset"] else None,
        "reference_accuracy": run.spec.reference_accuracy.get(request.dataset, {}).get(request.ipc),
        "synthetic_set": run.rundir.SYNTHETIC_SET,
        "provenance": provenance(run.device),
    }
    write_json_atomic(run.rundir.result, record)
    print(summary(run, results))
    return record


def summary(run: ResolvedRun, results: dict[str, EvaluationResult | None]) -> str:
    """The lines ``dcbench run`` prints at the end."""
    request, evaluation = run.request, results["evaluation"]
    protocol = evaluation.protocol
    lines = [
        f"{request.method} on {request.dataset}, IPC {request.ipc}, seed {request.seed} "
        f"({protocol.num_models} models x {protocol.epochs} epochs, protocol {protocol.name!r})",
    ]
    for name, result in evaluation.by_model.items():
        line = f"  {name}: test accuracy {format_accuracy(result)} %  (lr {result.lr:.4g})"
        if results["baseline"] is not None:
            line += f"   random real subset: {format_accuracy(results['baseline'].by_model[name])} %"
        if results["whole_dataset"] is not None:
            line += f"   whole dataset: {format_accuracy(results['whole_dataset'].by_model[name])} %"
        lines.append(line)
    lines.append(f"run directory: {run.rundir}")
    return "\n".join(lines)
