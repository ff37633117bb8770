"""A run request and its resolution: every input validated once, before any work or file.

``resolve(request)`` looks up the method spec, merges the option layers (defaults < config card
< ``--config`` file < flags) and builds them into the method's typed options, picks the ZCA
setting, the dataset, the evaluation protocol and architectures, the device and the run
directory. ``dcbench run`` and every cell of ``dcbench bench`` go through it; nothing downstream
validates a request again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcbench_tesla.config import build_options, read_config_file
from dcbench_tesla.data import DEFAULT_DATASET, DatasetSpec, dataset_spec
from dcbench_tesla.errors import UserError
from dcbench_tesla.method import ConfigCard, MethodSpec, distiller_class, spec
from dcbench_tesla.run.rundir import RunDir


@dataclass
class RunRequest:
    """Everything ``dcbench run`` asks for. None means "use the default".

    Fair-evaluation fields: ``real`` (evaluate the whole training pool with hard labels, cached, for
    HLR; None: only when it is already cached), ``ddrs_weight`` (``w`` of DDRS), ``eval_split`` (the
    split the final evaluation scores: "test" for a run, "val" for a ``dcbench tune`` trial, which never
    reads the test split) and
    ``on_eval`` (called as ``on_eval(iteration, val_accuracy)`` after every ``--eval-every``
    evaluation; ``dcbench tune`` reports to its pruner through it and may raise to stop the run).
    """

    method: str
    dataset: str = DEFAULT_DATASET
    ipc: int = 10
    seed: int = 0
    output: Path | None = None
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    iterations: int | None = None
    zca: bool | None = None
    data_root: Path | None = None
    image_size: int | None = None
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
    yes: bool = False
    real: bool | None = None
    ddrs_weight: float = 0.5
    eval_split: str = "test"
    on_eval: Callable[[int, float], None] | None = None

    def default_output(self) -> Path:
        """``runs/<method>-<dataset>-ipc<ipc>-seed<seed>``."""
        return Path("runs") / f"{self.method}-{self.dataset}-ipc{self.ipc}-seed{self.seed}"


@dataclass
class ResolvedRun:
    """A validated :class:`RunRequest` with everything it resolved to.

    Attributes:
        request: The request as given.
        spec: The method's spec.
        overrides: The merged option overrides (what ``make`` receives).
        options: The method's built, typed options.
        layers: Each option layer and where it came from (written to ``config.json``).
        card: The config card used, if any.
        zca: Whether the data is ZCA-whitened.
        dataset: The dataset's registry entry.
        protocol: The evaluation protocol.
        models: Evaluation architectures (the first one also monitors ``--eval-every``).
        device: The torch device.
        rundir: The run directory.
        resumes: Whether the episode resumes from the run directory's checkpoint (``--resume`` with
            a checkpoint there; ``--resume`` on a run stopped before its first checkpoint starts over).
    """

    request: RunRequest
    spec: MethodSpec
    overrides: dict[str, Any]
    options: Any
    layers: dict[str, Any]
    card: ConfigCard | None
    zca: bool
    dataset: DatasetSpec
    protocol: Any
    models: list[str]
    device: Any
    rundir: RunDir
    resumes: bool = False

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint."""
        r = self.request
        options = dataclasses.asdict(self.options)
        return {"method": r.method, "dataset": r.dataset, "ipc": r.ipc, "seed": r.seed, "options": options}

    def config_record(self, threads: int) -> dict[str, Any]:
        """The ``config.json`` of the run."""
        r = self.request
        return {
            "method": r.method,
            "dataset": r.dataset,
            "ipc": r.ipc,
            "seed": r.seed,
            "zca": self.zca,
            "options": dataclasses.asdict(self.options),
            "layers": self.layers,
            "evaluation": {
                "protocol": dataclasses.asdict(self.protocol),
                "models": self.models,
                "split": r.eval_split,
                "real": r.real,
                "ddrs_weight": r.ddrs_weight,
            },
            "device": str(self.device),
            "threads": threads,
        }

    def for_resume(self) -> ResolvedRun:
        """The same run, resuming from the checkpoint of its run directory."""
        request = dataclasses.replace(self.request, resume=True, overwrite=False)
        return dataclasses.replace(self, request=request, resumes=True)

    def load_dataset(self) -> Any:
        """Load and preprocess the dataset (the expensive part, done once the request is valid)."""
        from dcbench_tesla.data import load_dataset

        r = self.request
        return load_dataset(r.dataset, r.data_root, zca=self.zca, cache_dir=r.cache_dir, image_size=r.image_size)


def option_layers(request: RunRequest, method_spec: MethodSpec) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Merge option layers (defaults < card < config file < flags).

    The card is the method's card for the dataset and IPC, else the dataset's card at the nearest IPC
    (recorded as derived, with the IPC it was written for).

    Returns:
        The merged option overrides, a description of the layers, and whether to use ZCA.
    """
    card = method_spec.nearest_card(request.dataset, request.ipc)
    file_options = read_config_file(request.config_file) if request.config_file else {}
    flag_options = dict(request.options)
    if request.iterations is not None:
        flag_options["iterations"] = request.iterations
    merged = {**method_spec.kwargs, **(card.options if card else {}), **file_options, **flag_options}
    zca = request.zca if request.zca is not None else bool(card.zca) if card and card.zca is not None else False
    layers = {
        "spec_defaults": method_spec.kwargs,
        "config_card": {
            "options": card.options,
            "zca": card.zca,
            "source": card.source,
            "ipc": card.ipc,
            "derived": card.ipc != request.ipc,
        }
        if card
        else None,
        "config_file": {"path": str(request.config_file), "options": file_options} if request.config_file else None,
        "flags": flag_options,
    }
    return merged, layers, zca


def _check_counts(request: RunRequest) -> None:
    if request.ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {request.ipc}")
    if request.eval_every < 0:
        raise UserError("--eval-every must be 0 (off) or a positive number of iterations")
    if request.checkpoint_every < 0:
        raise UserError("--checkpoint-every must be 0 (only on interrupt) or a positive number of iterations")
    if request.iterations is not None and request.iterations < 0:
        raise UserError(f"--iterations must be at least 0, got {request.iterations}")
    if request.eval_split not in ("test", "val"):
        raise UserError(f"the final evaluation scores the 'test' or the 'val' split, not {request.eval_split!r}")


def resolve(request: RunRequest) -> ResolvedRun:
    """Validate ``request`` and resolve everything it implies; touches no file.

    Raises:
        UserError: any invalid input, with what to do instead.
    """
    from dcbench_tesla.checks import MAX_THREADS, resolve_device
    from dcbench_tesla.models import MODELS
    from dcbench_tesla.protocols import evaluation_lr, protocol_for
    from dcbench_tesla.scores import check_weight

    if request.threads is not None and not 1 <= request.threads <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {request.threads}")
    device = resolve_device(request.device)
    method_spec = spec(request.method)
    data = dataset_spec(request.dataset)
    _check_counts(request)
    check_weight(request.ddrs_weight)
    overrides, layers, zca = option_layers(request, method_spec)
    options = build_options(distiller_class(method_spec).Config, overrides, owner=f"method {request.method!r}")
    protocol = protocol_for(request.dataset, request.protocol, request.num_eval_models, request.eval_epochs)
    models = list(dict.fromkeys(request.eval_models or [data.default_model]))
    for model in models:
        MODELS.get(model)
    if request.eval_lr is not None:
        evaluation_lr(None, "learned", request.eval_lr, protocol)
    rundir = RunDir(request.output or request.default_output())
    resumes = rundir.check_usable(request.overwrite, request.resume)
    return ResolvedRun(
        request=request,
        spec=method_spec,
        overrides=overrides,
        options=options,
        layers=layers,
        card=method_spec.nearest_card(request.dataset, request.ipc),
        zca=zca,
        dataset=data,
        protocol=protocol,
        models=models,
        device=device,
        rundir=rundir,
        resumes=resumes,
    )
