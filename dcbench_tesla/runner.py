"""The run loop: resolve the config, distil, save, evaluate, write the result record.

The loop never branches on the method. A run directory holds ``config.json`` (the
resolved configuration and where each part came from), ``metrics.jsonl`` (one JSON
line per iteration), ``synthetic_set.safetensors`` and ``result.json`` (see
:data:`RESULT_SCHEMA`).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.config import build_options, read_config_file
from dcbench_tesla.data import DATASETS, Dataset, load_dataset
from dcbench_tesla.distiller import RunContext, check_ipc
from dcbench_tesla.errors import DivergenceError, Interrupted, UserError
from dcbench_tesla.evaluation import (
    EvaluationProtocol,
    EvaluationResult,
    evaluate_images,
    format_accuracy,
    protocol_for,
    random_real_subset,
)
from dcbench_tesla.files import ensure_writable_dir, write_json_atomic
from dcbench_tesla.method import MethodSpec, distiller_class, make, spec
from dcbench_tesla.models import MODELS
from dcbench_tesla.provenance import provenance
from dcbench_tesla.synthetic import SyntheticSet
from dcbench_tesla.wrappers import Checkpoint, EvaluateEvery, FiniteInfo, IterationLimit, MetricsLog, ProgressBar

RESULT_SCHEMA_VERSION = 1

#: The keys of ``result.json``; documented here once and checked by the tests.
RESULT_SCHEMA: dict[str, str] = {
    "schema_version": "int, version of this schema",
    "method": "the MethodSpec as a dict",
    "dataset": "dataset name",
    "ipc": "images per class",
    "seed": "the run's seed (distillation, baseline draw and evaluation models derive from it)",
    "config": "resolved method options, run options and the source of each layer",
    "iterations": "outer iterations done",
    "evaluation": "protocol, seed and per-model accuracies, mean and std (fractions)",
    "baseline": "the random real subset of the same IPC under the same protocol (null for method random)",
    "whole_dataset": "the whole training set under the protocol, if asked for (else null)",
    "reference_accuracy": "the paper's published accuracy for this dataset and IPC, if any (percent)",
    "synthetic_set": "path of the synthetic-set file, relative to the run directory",
    "provenance": "versions, device, threads, command, git revision",
}

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "synthetic_set.safetensors",
    "result.json",
    "checkpoint.safetensors",
)
CHECKPOINT = "checkpoint.safetensors"


@dataclass
class RunRequest:
    """Everything ``dcbench run`` asks for. None means "use the default"."""

    method: str
    dataset: str = "digits"
    ipc: int = 10
    seed: int = 0
    output: Path | None = None
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    iterations: int | None = None
    zca: bool | None = None
    data_root: Path | None = None
    eval_models: list[str] | None = None
    protocol: str | None = None
    num_eval_models: int | None = None
    eval_epochs: int | None = None
    eval_lr: float | None = None
    baseline: bool = True
    whole_dataset: bool = False
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    cache_dir: Path | None = None
    checkpoint_every: int = 100
    resume: bool = False
    eval_every: int = 0


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when present, else ``cpu``; an explicit unavailable device is a UserError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available here; use --device cpu")
    return device


def default_output(request: RunRequest) -> Path:
    """``runs/<method>-<dataset>-ipc<ipc>-seed<seed>``."""
    return Path("runs") / f"{request.method}-{request.dataset}-ipc{request.ipc}-seed{request.seed}"


def prepare_output(path: Path, overwrite: bool, resume: bool = False) -> Path:
    """Check the run directory can be used; refuse an existing run unless ``overwrite`` or ``resume``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--output {str(path)!r} exists and is not a directory")
    if resume:
        if overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one")
        if not (path / CHECKPOINT).is_file():
            raise UserError(f"nothing to resume: {str(path / CHECKPOINT)!r} does not exist (run without --resume)")
        return path
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(
            f"run directory {str(path)!r} already holds files; pass --overwrite to replace them, "
            "or choose another --output"
        )
    return path


def resolve_method_options(request: RunRequest, method_spec: MethodSpec) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Merge option layers (defaults < card < config file < flags).

    Returns:
        The merged option overrides, a description of the layers, and whether to use ZCA.
    """
    card = method_spec.card_for(request.dataset, request.ipc)
    file_options = read_config_file(request.config_file) if request.config_file else {}
    flag_options = dict(request.options)
    if request.iterations is not None:
        flag_options["iterations"] = request.iterations
    merged = {**method_spec.kwargs, **(card.options if card else {}), **file_options, **flag_options}
    zca = request.zca if request.zca is not None else bool(card.zca) if card and card.zca is not None else False
    layers = {
        "spec_defaults": method_spec.kwargs,
        "config_card": {"options": card.options, "zca": card.zca, "source": card.source} if card else None,
        "config_file": {"path": str(request.config_file), "options": file_options} if request.config_file else None,
        "flags": flag_options,
    }
    return merged, layers, zca


def resolve_protocol(request: RunRequest) -> EvaluationProtocol:
    """The request's evaluation protocol (see :func:`~dcbench_tesla.evaluation.protocol_for`)."""
    return protocol_for(request.dataset, request.protocol, request.num_eval_models, request.eval_epochs)


def evaluation_lr(
    method_spec: MethodSpec, syn: SyntheticSet, override: float | None, protocol: EvaluationProtocol
) -> float:
    """The lr the protocol trains with: the flag, else the learned lr, else the method's fixed lr."""
    if override is not None:
        if not override > 0:
            raise UserError(f"--eval-lr must be positive, got {override}")
        return float(override)
    if method_spec.eval_lr == "learned" and syn.lr is not None:
        return float(syn.lr)
    if isinstance(method_spec.eval_lr, (int, float)):
        return float(method_spec.eval_lr)
    return protocol.fixed_lr


def check_models(names: list[str]) -> list[str]:
    """Check every evaluation model is registered (UserError with suggestions)."""
    for name in names:
        MODELS.get(name)
    return names


class StopRequests:
    """Turns SIGINT / SIGTERM into a flag the run loop checks after each iteration."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def out_of_memory_error(request: RunRequest, distiller: Any, exc: Exception) -> UserError:
    """A GPU out-of-memory error as a message with the measured peak and what to change."""
    peak = ""
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        total_mib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**20
        peak = f" Peak allocated before the failure: {peak_mib:,.0f} MiB of {total_mib:,.0f} MiB."
    options = distiller.options_dict()
    advice = []
    if options.get("engine") == "unrolled":
        advice.append("use --method tesla or tesla-exact (memory constant in syn_steps)")
    if "batch_syn" in options:
        advice.append(f"lower batch_syn (now {options['batch_syn']}) with --set batch_syn=N")
    if "syn_steps" in options and options.get("engine") == "unrolled":
        advice.append(f"lower syn_steps (now {options['syn_steps']})")
    advice.append("measure what a setting needs with 'dcbench profile'")
    return UserError(
        f"{request.method} ran out of GPU memory at iteration {getattr(distiller, 'iteration', '?') + 1}.{peak} "
        f"To fit: {'; '.join(advice)}. ({str(exc).splitlines()[0]})"
    )


def periodic_evaluation(request: RunRequest, dataset: Dataset) -> Any:
    """``--eval-every``: one model of the first architecture on the current set (progress only).

    The figure is for watching a run; it is logged, never used to pick a set (the result is
    always the final set).
    """
    protocol = resolve_protocol(request).replace(num_models=1)
    model = (request.eval_models or [DATASETS.get(request.dataset).default_model])[0]
    method_spec = spec(request.method)

    def evaluate(syn: SyntheticSet) -> dict[str, Any]:
        lr = evaluation_lr(method_spec, syn, request.eval_lr, protocol)
        result = evaluate_images(
            syn.images, syn.labels, dataset, [model], lr, protocol, request.seed, resolve_device(request.device)
        )
        return {"eval_acc": result.by_model[model].mean}

    return evaluate


def run_identity(request: RunRequest, options: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint."""
    return {
        "method": request.method,
        "dataset": request.dataset,
        "ipc": request.ipc,
        "seed": request.seed,
        "options": options,
    }


def distil(distiller: Any, dataset: Dataset, request: RunRequest, run_dir: Path) -> Any:
    """Reset (or resume) and step the wrapped distiller until its iteration limit.

    Saves a checkpoint every ``request.checkpoint_every`` iterations, when the loss
    diverges (the last good state) and on SIGINT / SIGTERM (then raises Interrupted).
    """
    total = distiller.iterations
    checked = FiniteInfo(distiller)
    if request.eval_every > 0:
        checked = EvaluateEvery(checked, request.eval_every, periodic_evaluation(request, dataset))
    limit = IterationLimit(checked, total)
    log = MetricsLog(limit, run_dir / "metrics.jsonl", fresh=not request.resume)
    ckpt = Checkpoint(
        log, run_dir / CHECKPOINT, request.checkpoint_every, run_identity(request, distiller.options_dict())
    )
    ckpt.reset(dataset, request.ipc, request.seed)
    if request.resume:
        limit.done_iterations = ckpt.restore()
        log.keep_until(limit.done_iterations)
        print(f"resuming {request.method} from iteration {limit.done_iterations} of {total} ({run_dir / CHECKPOINT})")
    env = ProgressBar(
        ckpt,
        total=total,
        enabled=request.progress,
        desc=f"distil {request.method}",
        initial=limit.done_iterations,
    )
    with StopRequests() as stop:
        while not limit.finished:
            try:
                env.step()
            except DivergenceError as exc:
                ckpt.save()
                raise DivergenceError(f"{exc} Last good state saved in {run_dir / CHECKPOINT}.") from None
            except torch.OutOfMemoryError as exc:
                raise out_of_memory_error(request, distiller, exc) from None
            if stop.requested:
                ckpt.save()
                env.bar.close()
                raise Interrupted(
                    f"{stop.requested} received: stopped after iteration {limit.done_iterations} of {total}; "
                    f"checkpoint saved. Continue with the same command plus --resume."
                )
    env.bar.close()
    return env


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


def run(request: RunRequest) -> dict[str, Any]:
    """Run one method on one dataset and IPC; write the run directory; return the result record."""
    if request.threads is not None:
        if request.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(request.threads)
    device = resolve_device(request.device)
    method_spec = spec(request.method)
    DATASETS.get(request.dataset)
    if request.ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {request.ipc}")
    options, layers, zca = resolve_method_options(request, method_spec)
    build_options(distiller_class(method_spec).Config, options, owner=f"method {request.method!r}")
    protocol = resolve_protocol(request)
    dataset_spec = DATASETS.get(request.dataset)
    models = check_models(request.eval_models or [dataset_spec.default_model])
    if request.eval_every < 0:
        raise UserError("--eval-every must be 0 (off) or a positive number of iterations")
    if request.checkpoint_every < 0:
        raise UserError("--checkpoint-every must be 0 (only on interrupt) or a positive number of iterations")
    run_dir = prepare_output(Path(request.output or default_output(request)), request.overwrite, request.resume)
    if method_spec.config_cards and method_spec.card_for(request.dataset, request.ipc) is None:
        print(
            f"notice: no config card for {request.method} on {request.dataset} at IPC {request.ipc}; using its defaults"
        )

    dataset = load_dataset(request.dataset, request.data_root, zca=zca, cache_dir=request.cache_dir)
    check_ipc(dataset, request.ipc)
    ensure_writable_dir(run_dir)
    for name in RUN_FILES if not request.resume else ("synthetic_set.safetensors", "result.json"):
        if (run_dir / name).exists():
            (run_dir / name).unlink()

    context = RunContext(
        device=device,
        progress=request.progress,
        **({"cache_dir": request.cache_dir} if request.cache_dir else {}),
    )
    distiller = make(request.method, context, **options)
    config_record = {
        "method": request.method,
        "dataset": request.dataset,
        "ipc": request.ipc,
        "seed": request.seed,
        "zca": zca,
        "options": distiller.options_dict(),
        "layers": layers,
        "evaluation": {"protocol": dataclasses.asdict(protocol), "models": models},
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    write_json_atomic(run_dir / "config.json", config_record)  # on resume: same identity, current evaluation
    try:
        env = distil(distiller, dataset, request, run_dir)
        syn = env.synthetic_set()
    finally:
        distiller.close()
    check_exported_set(syn, dataset, request.method)
    syn.config = config_record
    syn.extra = {"versions": provenance(device)["versions"]}
    syn.save(run_dir / "synthetic_set.safetensors")

    lr = evaluation_lr(method_spec, syn, request.eval_lr, protocol)
    evaluation = evaluate_images(
        syn.images,
        syn.labels,
        dataset,
        models,
        lr,
        protocol,
        request.seed,
        device,
        request.progress,
        "evaluate",
    )
    baseline = None
    if request.baseline and request.method != "random":
        images, labels = random_real_subset(dataset, request.ipc, request.seed)
        baseline = evaluate_images(
            images, labels, dataset, models, lr, protocol, request.seed, device, request.progress, "baseline"
        )
    whole = None
    if request.whole_dataset:
        whole = evaluate_images(
            dataset.train_images,
            dataset.train_labels,
            dataset,
            models,
            protocol.fixed_lr,
            protocol,
            request.seed,
            device,
            request.progress,
            "whole dataset",
        )
    record = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "method": method_spec.to_dict(),
        "dataset": request.dataset,
        "ipc": request.ipc,
        "seed": request.seed,
        "config": config_record,
        "iterations": syn.iteration,
        "evaluation": evaluation.to_dict(),
        "baseline": baseline.to_dict() if baseline else None,
        "whole_dataset": whole.to_dict() if whole else None,
        "reference_accuracy": method_spec.reference_accuracy.get(request.dataset, {}).get(request.ipc),
        "synthetic_set": "synthetic_set.safetensors",
        "provenance": provenance(device),
    }
    write_json_atomic(run_dir / "result.json", record)
    print(summary(request, evaluation, baseline, whole, run_dir))
    return record


def summary(
    request: RunRequest,
    evaluation: EvaluationResult,
    baseline: EvaluationResult | None,
    whole: EvaluationResult | None,
    run_dir: Path,
) -> str:
    """The lines ``dcbench run`` prints at the end."""
    protocol = evaluation.protocol
    lines = [
        f"{request.method} on {request.dataset}, IPC {request.ipc}, seed {request.seed} "
        f"({protocol.num_models} models x {protocol.epochs} epochs, protocol {protocol.name!r})",
    ]
    for name, result in evaluation.by_model.items():
        line = f"  {name}: test accuracy {format_accuracy(result)} %  (lr {result.lr:.4g})"
        if baseline is not None:
            line += f"   random real subset: {format_accuracy(baseline.by_model[name])} %"
        if whole is not None:
            line += f"   whole dataset: {format_accuracy(whole.by_model[name])} %"
        lines.append(line)
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)
