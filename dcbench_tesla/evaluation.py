"""The evaluation protocol of the MTT and TESLA papers, as a registered object.

Train K fresh randomly initialised networks on a set of images: SGD (momentum 0.9,
weight decay 5e-4), batch 256, ``epochs`` epochs with the lr decayed x0.1 at half-way,
DSA augmentation on training batches, none at test. Report mean and (population)
standard deviation of the final accuracy on the scored split: the test split for a run's final
report, the validation split for ``--eval-every`` and ``dcbench tune``. Never selects on the test set.

Where each SGD step sees few images (IPC 1 on small data), the K models of an architecture train
together in one batched pass (:func:`train_models_together`, ``torch.func.vmap`` over their
stacked parameters): the same models, batches and augmentations as one after another, a little
faster where per-step overhead dominates (see :data:`TOGETHER_MAX_STEP_IMAGES`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dcbench_tesla.data import Dataset, default_cache_dir
from dcbench_tesla.data.augment import DSA
from dcbench_tesla.data.dataset import Split
from dcbench_tesla.executors import EVALUATION_GPU_FRACTION, Task, current_executor, device_here
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.models import build_model
from dcbench_tesla.models.flat import FlatParams
from dcbench_tesla.protocols import EvaluationProtocol


@dataclass
class ArchitectureResult:
    """Accuracies of K models of one architecture."""

    model: str
    accuracies: list[float]
    lr: float

    @property
    def mean(self) -> float:
        """Mean test accuracy (fraction)."""
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation of the test accuracy (as upstream's np.std)."""
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "model": self.model,
            "lr": self.lr,
            "accuracies": self.accuracies,
            "mean": self.mean,
            "std": self.std,
        }


@dataclass
class EvaluationResult:
    """Results of one protocol over one or more architectures."""

    protocol: EvaluationProtocol
    seed: int
    by_model: dict[str, ArchitectureResult] = field(default_factory=dict)
    split: Split = "test"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "protocol": dataclasses.asdict(self.protocol),
            "seed": self.seed,
            "split": self.split,
            "by_model": {name: r.to_dict() for name, r in self.by_model.items()},
        }


def format_accuracy(result: ArchitectureResult) -> str:
    """``"85.31 ± 1.20"`` in percent."""
    return f"{100 * result.mean:.2f} ± {100 * result.std:.2f}"


#: Most images per SGD step (``min(N, batch_size)``) at which the K models of an architecture train
#: together (:func:`train_models_together`); above it, one after another. Measured on the 2-core CPU
#: machine (``python benchmarks/batched_evaluation.py --threads 1,2`` -> ``reports/batched-evaluation.md``):
#: a modest gain at 10 and 20 images per step (medians 1.04-1.33x), mixed at 30 and 50, a loss at 100 (vmap's
#: grouped convolutions against dense ones). On a GPU, where small steps are launch-bound, not measured.
TOGETHER_MAX_STEP_IMAGES = 20


def _model_seed(seed: int, model_index: int) -> int:
    return (seed * 1_000_003 + model_index * 7919) % (2**31)


@contextmanager
def global_rng_from(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators from ``seed`` for the block, and restore them afterwards.

    Training draws batch orders and augmentations from its own generator, but a layer that draws from
    the global generators (dropout: the ViT) would otherwise depend on whatever the process ran before
    it (the models trained earlier, a Ray worker's earlier task), so the same seed gave other numbers.
    """
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 2_654_435_761 + 97) % 2**63)  # a stream apart from the initialisation's
        yield


def _fresh_model(model_name: str, dataset: Dataset, seed: int, device: torch.device) -> torch.nn.Module:
    """A freshly initialised model of ``model_name`` for ``dataset``, its initialisation drawn from ``seed``."""
    c, h, _ = dataset.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_name, channels=c, num_classes=dataset.num_classes, image_size=h).to(device)


def trains_together(model_name: str, dataset: Dataset, protocol: EvaluationProtocol, num_images: int) -> bool:
    """Whether :func:`evaluate_images` trains the K models of ``model_name`` on ``num_images`` together.

    True when the model has a functional forward ``vmap`` can batch (no running statistics) and each
    step sees at most :data:`TOGETHER_MAX_STEP_IMAGES` images.
    """
    if protocol.num_models < 2 or min(num_images, protocol.batch_size) > TOGETHER_MAX_STEP_IMAGES:
        return False
    probe = _fresh_model(model_name, dataset, 0, torch.device("cpu"))
    return FlatParams(probe, mode="functional").forward_mode == "functional"


def train_model(
    model_name: str,
    images: Tensor,
    labels: Tensor,
    dataset: Dataset,
    lr: float,
    protocol: EvaluationProtocol,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[], None] | None = None,
) -> torch.nn.Module:
    """Train one fresh model on ``images``/``labels`` with the protocol; return it.

    Args:
        model_name: Model registry name.
        images: (N, C, H, W) model inputs.
        labels: (N,) class indices or (N, K) probabilities (soft labels).
        dataset: Supplies the image shape and the class count.
        lr: Initial learning rate.
        protocol: Evaluation settings.
        seed: Seeds model initialisation, batch order and augmentation.
        device: Where to train (inside a remote task: as its worker sees it, see ``device_here``).
        on_epoch: Called after every epoch (progress reporting).
    """
    device = device_here(device)
    model = _fresh_model(model_name, dataset, seed, device)
    generator = torch.Generator().manual_seed(seed)
    augment = DSA(protocol.dsa_strategy)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )
    decay_epoch = math.floor(protocol.epochs * protocol.decay_at)
    images, labels = images.to(device), labels.to(device)
    model.train()
    with global_rng_from(seed, device):
        for epoch in range(protocol.epochs):
            if epoch == decay_epoch:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
            train_one_epoch(model, optimizer, images, labels, protocol.batch_size, augment, generator, device)
            if on_epoch is not None:
                on_epoch()
    return model


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    augment: DSA,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """One epoch of SGD on shuffled batches with a DSA draw per batch (evaluation and experts).

    Every random draw (batch order, augmentation seeds) comes from ``generator``. ``images`` may
    live on the CPU while ``device`` is a GPU: batches are moved as they are used.
    """
    order = torch.randperm(images.shape[0], generator=generator)
    for start in range(0, images.shape[0], batch_size):
        x, y = _augmented_batch(images, labels, order[start : start + batch_size], augment, generator, device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _augmented_batch(
    images: Tensor, labels: Tensor, index: Tensor, augment: DSA, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The batch ``index`` of ``images``/``labels`` on ``device``, augmented with the next seed of ``generator``."""
    index = index.to(images.device)
    x, y = images[index].to(device, non_blocking=True), labels[index].to(device, non_blocking=True)
    batch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return augment(x, seed=batch_seed), y


def train_models_together(
    model_name: str,
    images: Tensor,
    labels: Tensor,
    dataset: Dataset,
    lr: float,
    protocol: EvaluationProtocol,
    seeds: list[int],
    device: torch.device,
    on_epoch: Callable[[], None] | None = None,
) -> list[torch.nn.Module]:
    """:func:`train_model` for every seed in one batched pass; the trained models.

    The same initialisations, batch orders and augmentations as :func:`train_model` with each
    seed; the K gradients come from one ``torch.func.vmap`` over the models' stacked flat parameters,
    and the update is ``torch.optim.SGD``'s (momentum, weight decay, no dampening) on all of them at
    once. The models agree with one-after-another training to float round-off (the tests compare
    their parameters). ``on_epoch`` is called once per model and epoch.

    Raises:
        ValueError: ``model_name`` has no functional forward ``vmap`` can batch (see :func:`trains_together`).
    """
    device = device_here(device)
    models = [_fresh_model(model_name, dataset, seed, device) for seed in seeds]
    flat = FlatParams(models[0], mode="functional")
    if flat.forward_mode != "functional":
        raise ValueError(f"{model_name} cannot train together: {flat.forward_note}")
    weights = torch.stack([flat.flatten(model) for model in models])
    velocity = torch.zeros_like(weights)
    gradients = torch.func.vmap(torch.func.grad(lambda w, x, y: F.cross_entropy(flat(w, x), y)))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    augment = DSA(protocol.dsa_strategy)
    images, labels = images.to(device), labels.to(device)
    step_lr, decay_epoch = lr, math.floor(protocol.epochs * protocol.decay_at)
    for epoch in range(protocol.epochs):
        if epoch == decay_epoch:
            step_lr *= 0.1
        orders = [torch.randperm(images.shape[0], generator=generator) for generator in generators]
        for start in range(0, images.shape[0], protocol.batch_size):
            batches = [
                _augmented_batch(images, labels, order[start : start + protocol.batch_size], augment, generator, device)
                for order, generator in zip(orders, generators, strict=True)
            ]
            grads = gradients(weights, torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches]))
            with torch.no_grad():
                velocity.mul_(protocol.momentum).add_(grads).add_(weights, alpha=protocol.weight_decay)
                weights.sub_(velocity, alpha=step_lr)
        if on_epoch is not None:
            for _ in seeds:
                on_epoch()
    for model, w in zip(models, weights, strict=True):
        flat.assign(w, model)
    return models


def train_models(
    model_name: str,
    images: Tensor,
    labels: Tensor,
    dataset: Dataset,
    lr: float,
    protocol: EvaluationProtocol,
    seeds: list[int],
    device: torch.device,
    on_epoch: Callable[[], None] | None = None,
    split: Split = "test",
    together: bool = False,
) -> list[float]:
    """One evaluation task: a fresh model per seed, trained together or one after another.

    Returns:
        Each model's accuracy on ``split``: "test" for a run's final report, "val" for monitoring and tuning.
    """
    device = device_here(device)
    if together:
        models = train_models_together(model_name, images, labels, dataset, lr, protocol, seeds, device, on_epoch)
    else:
        models = [
            train_model(model_name, images, labels, dataset, lr, protocol, seed, device, on_epoch) for seed in seeds
        ]
    return [test_accuracy(model, dataset, protocol.test_batch_size, device, split=split) for model in models]


@torch.no_grad()
def test_accuracy(
    model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device, split: Split = "test"
) -> float:
    """Fraction of ``split`` (the test split by default) ``model`` classifies correctly (eval mode, no augmentation).

    Raises:
        UserError: ``split="val"`` on a dataset without validation images.
    """
    images, labels = dataset.split(split)
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, images.shape[0])


def _evaluation_view(dataset: Dataset) -> Dataset:
    """``dataset`` without its training images: all an evaluation model needs of it (shape, classes, scored splits)."""
    shape = (0, *dataset.train_images.shape[1:])
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images.new_empty(shape),
        train_labels=dataset.train_labels.new_empty((0,)),
        _class_index={},
    )


def evaluate_images(
    images: Tensor,
    labels: Tensor,
    dataset: Dataset,
    models: list[str],
    lr: float,
    protocol: EvaluationProtocol,
    seed: int,
    device: torch.device,
    progress: bool = False,
    label: str = "evaluate",
    split: Split = "test",
) -> EvaluationResult:
    """Train ``protocol.num_models`` fresh models of each architecture and score them on ``split``.

    Every model is one task of the command's executor (:mod:`dcbench_tesla.executors`), seeded
    from ``(seed, k)``, or the K models of an architecture are one task where they train together
    (:func:`trains_together`); the set and the test split are shared with the tasks once, not per task.
    On CUDA a task asks for :data:`~dcbench_tesla.executors.EVALUATION_GPU_FRACTION` of a GPU.
    With ``progress``, one bar counts epochs over every model (locally an honest ETA from the
    first epoch on; on a cluster a model's epochs count when it completes).

    Raises:
        UserError: a model's task failed on a remote executor (its error and log named).
    """
    executor = current_executor()
    # a remote task gets the data without the training pool; the local executor uses it as it is
    view = _evaluation_view(dataset) if executor.remote else dataset
    shared = (executor.share(images), executor.share(labels), executor.share(view, key=dataset))
    plan = [
        (model_name, group) for model_name in models for group in _model_groups(model_name, dataset, protocol, images)
    ]
    tasks = [
        Task(
            name=f"{label.replace(' ', '-')}-{model_name}-{'-'.join(map(str, group))}",
            fn=train_models,
            args=(model_name, *shared, lr, protocol, [_model_seed(seed, k) for k in group], device),
            kwargs={"split": split, "together": len(group) > 1},
            device=str(device),
            gpu_fraction=EVALUATION_GPU_FRACTION,
            units=protocol.epochs * len(group),
            on_unit="on_epoch",
        )
        for model_name, group in plan
    ]
    per_task: list[list[float]] = [[] for _ in tasks]
    for outcome in executor.map(tasks, desc=label, progress=progress, unit="epoch"):
        per_task[outcome.index] = [float(a) for a in outcome.result()]
    result = EvaluationResult(protocol=protocol, seed=seed, split=split)
    for model_name in models:
        accuracies = [
            a for (owner, _), values in zip(plan, per_task, strict=True) if owner == model_name for a in values
        ]
        result.by_model[model_name] = ArchitectureResult(model=model_name, accuracies=accuracies, lr=lr)
    return result


def _model_groups(model_name: str, dataset: Dataset, protocol: EvaluationProtocol, images: Tensor) -> list[list[int]]:
    """The model indices of each evaluation task of ``model_name``: all K in one, or one per task."""
    indices = list(range(protocol.num_models))
    return [indices] if trains_together(model_name, dataset, protocol, images.shape[0]) else [[k] for k in indices]


def random_real_subset(dataset: Dataset, ipc: int, seed: int) -> tuple[Tensor, Tensor]:
    """``ipc`` random real training images per class, drawn from ``seed``.

    Returns:
        images (num_classes * ipc, C, H, W) and labels (num_classes * ipc,), class-major.
    """
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in range(dataset.num_classes):
        pool = dataset.indices_of_class(label)
        picked.append(pool[torch.randperm(pool.numel(), generator=generator)[:ipc]])
    index = torch.cat(picked)
    return dataset.train_images[index].clone(), dataset.train_labels[index].clone()


def pool_fingerprint(dataset: Dataset, samples: int = 4096) -> str:
    """A short hash of the training pool as the models see it (preprocessing included).

    Hashes the dataset name, the pool's shape, every label, the preprocessing's kind, mean and std,
    and up to ``samples`` evenly spaced images (cheap at ImageNet scale, and any change of split,
    normalisation or ZCA state changes them).
    """
    images, labels = dataset.train_images, dataset.train_labels
    stride = max(1, math.ceil(images.shape[0] / samples))
    digest = hashlib.sha256()
    header = [dataset.name, list(images.shape), dataset.preprocessing.kind]
    digest.update(json.dumps([*header, dataset.preprocessing.mean, dataset.preprocessing.std]).encode())
    digest.update(labels.cpu().numpy().tobytes())
    digest.update(images[::stride].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def whole_pool_evaluation(
    dataset: Dataset,
    models: list[str],
    protocol: EvaluationProtocol,
    seed: int,
    device: torch.device,
    *,
    split: Split = "test",
    cache_dir: Path | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """The whole training pool with hard labels at the protocol's fixed lr (``acc_real_hard``), cached.

    Computed once per (training pool and preprocessing, model, protocol, seed, split) and kept as JSON
    under ``<cache_dir>/real/`` (default ``$DCBENCH_CACHE``), so every run on the same data reads it back.
    """
    result = EvaluationResult(protocol=protocol, seed=seed, split=split)
    for model_name in models:
        path = _whole_pool_path(dataset, model_name, protocol, seed, split, cache_dir)
        cached = _read_cached_result(path, model_name, protocol.num_models)
        if cached is None:
            fresh = evaluate_images(
                dataset.train_images,
                dataset.train_labels,
                dataset,
                [model_name],
                protocol.fixed_lr,
                protocol,
                seed,
                device,
                progress,
                "whole dataset",
                split=split,
            )
            cached = fresh.by_model[model_name]
            try:
                write_json_atomic(path, cached.to_dict())
            except OSError:
                pass  # an unwritable cache costs a recomputation next time, nothing more
        result.by_model[model_name] = cached
    return result


def _whole_pool_path(
    dataset: Dataset, model_name: str, protocol: EvaluationProtocol, seed: int, split: Split, cache_dir: Path | None
) -> Path:
    """Where :func:`whole_pool_evaluation` caches one architecture's result."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings = json.dumps([dataclasses.asdict(protocol), seed, split], sort_keys=True)
    key = hashlib.sha256(f"{pool_fingerprint(dataset)}|{model_name}|{settings}".encode()).hexdigest()[:16]
    return cache / "real" / f"{dataset.name}-{model_name}-{key}.json"


def whole_pool_cached(
    dataset: Dataset,
    models: list[str],
    protocol: EvaluationProtocol,
    seed: int,
    *,
    split: Split = "test",
    cache_dir: Path | None = None,
) -> bool:
    """True when :func:`whole_pool_evaluation` would only read its cache (nothing to train)."""
    return all(
        _read_cached_result(_whole_pool_path(dataset, m, protocol, seed, split, cache_dir), m, protocol.num_models)
        is not None
        for m in models
    )


def _read_cached_result(path: Path, model_name: str, num_models: int) -> ArchitectureResult | None:
    """A cached :class:`ArchitectureResult`, or None when missing, unreadable or not of this request."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        accuracies = [float(a) for a in data["accuracies"]]
        if data["model"] != model_name or len(accuracies) != num_models:
            return None
        return ArchitectureResult(model=model_name, accuracies=accuracies, lr=float(data["lr"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
