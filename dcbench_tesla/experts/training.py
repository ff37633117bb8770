"""Training expert trajectories (MTT's ``buffer.py``), resumable, and the cache ``dcbench run`` uses.

Expert ``i`` is a fresh model initialised from ``expert_seed(config.seed, i)`` and trained with
plain SGD for ``config.epochs`` epochs over the whole training set, DSA on every batch; its
flattened parameters are saved after every epoch (snapshot 0 = the initialisation). Batch order
and augmentation draws come from a local generator seeded the same way, so on the CPU the same
config gives bitwise-equal trajectories, and the caller's global random stream is left untouched.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dcbench_tesla.data import Dataset
from dcbench_tesla.data.augment import DSA
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import global_rng_from, test_accuracy, train_one_epoch
from dcbench_tesla.executors import Task, TaskFailures, current_executor, device_here
from dcbench_tesla.experts.config import (
    ExpertConfig,
    build_for,
    human_bytes,
    layout_numel,
    model_layout,
    storage_bytes,
)
from dcbench_tesla.experts.store import (
    MANIFEST,
    ExpertStore,
    expert_filename,
    finished_indices,
    manifest_metadata,
    write_expert,
    write_manifest,
)
from dcbench_tesla.models.flat import FlatParams

Notice = Callable[[str], None]

# Training sets up to this size are moved to the GPU once; larger ones go batch by batch.
_RESIDENT_BYTES = 4 * 2**30
_TEST_BATCH = 1024


def expert_seed(seed: int, index: int) -> int:
    """The seed of expert ``index`` under base seed ``seed`` (stable across versions and machines)."""
    digest = hashlib.sha256(f"dcbench-expert:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 1)


def expert_directory(cache_dir: Path | str, config: ExpertConfig, dataset: Dataset) -> Path:
    """``cache_dir / "experts" / "<dataset>-<model>-<key>"``: where :func:`ensure_experts` keeps them."""
    layout = model_layout(config.model, dataset)
    return Path(cache_dir) / "experts" / config.directory_name(dataset.preprocessing, layout)


def train_one_expert(
    dataset: Dataset,
    config: ExpertConfig,
    index: int,
    device: torch.device | str,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[Tensor, float]:
    """Train expert ``index`` of ``config`` on ``dataset`` (``on_epoch`` is called after every epoch).

    Returns:
        The trajectory, float32 ``(epochs + 1, P)`` on the CPU, and the final accuracy on the
        validation split (None for a dataset without one): experts never read the test split.

    Raises:
        UserError: the training diverged (NaN or inf parameters).
    """
    device = torch.device(device)
    seed = expert_seed(config.seed, index)
    model = build_for(config.model, dataset, seed).to(device)
    flat = FlatParams(model)
    trajectory = torch.empty(config.epochs + 1, flat.numel, dtype=torch.float32)
    trajectory[0] = flat.flatten().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    augment = DSA(config.dsa_strategy)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    images, labels = dataset.train_images, dataset.train_labels
    if device.type != "cpu" and images.numel() * images.element_size() <= _RESIDENT_BYTES:
        images, labels = images.to(device), labels.to(device)
    model.train()
    with global_rng_from(seed, device):  # dropout's masks, if the model has any, from the expert's seed
        for epoch in range(config.epochs):
            train_one_epoch(model, optimizer, images, labels, config.batch_size, augment, generator, device)
            if on_epoch is not None:
                on_epoch()
            snapshot = flat.flatten().float().cpu()
            if not bool(torch.isfinite(snapshot).all()):
                raise UserError(
                    f"expert {index} diverged in epoch {epoch + 1} (NaN/inf parameters) with lr {config.lr}; lower --lr"
                )
            trajectory[epoch + 1] = snapshot
    if not dataset.has_validation:
        return trajectory, None
    return trajectory, test_accuracy(model, dataset, _TEST_BATCH, device, split="val")


def _expert_task(
    dataset: Dataset,
    config: ExpertConfig,
    index: int,
    device: torch.device | str,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[Tensor, float, float, int]:
    """Expert ``index`` as an executor task: its trajectory, validation accuracy, seconds and torch threads."""
    start = time.perf_counter()
    trajectory, accuracy = train_one_expert(dataset, config, index, device_here(device), on_epoch=on_epoch)
    return trajectory, accuracy, time.perf_counter() - start, torch.get_num_threads()


def train_experts(
    dataset: Dataset,
    config: ExpertConfig,
    directory: Path | str,
    device: torch.device | str,
    progress: bool = True,
    notice: Notice = print,
) -> ExpertStore:
    """Train the experts of ``config`` that ``directory`` does not hold yet, and return the store.

    Prints the disk space the whole set needs before starting and refuses to start without
    enough free space. Experts whose file exists are skipped, so an interrupted run continues
    from the last finished expert. Each expert is one task of the command's executor
    (:mod:`dcbench_tesla.executors`); this process writes each one atomically as it arrives.

    Args:
        dataset: The training and test data (its preprocessing is recorded in the manifest).
        config: What to train; ``config.dataset`` and ``config.zca`` must match ``dataset``.
        directory: The store directory (created if needed).
        device: Where to train.
        progress: Show progress bars over experts and epochs.
        notice: Prints one-line notices.

    Returns:
        The store, limited to experts ``0 .. config.num_experts - 1``.

    Raises:
        UserError: ``config`` does not match ``dataset``; ``directory`` holds experts of another
            config, dataset or model; not enough disk space; or an expert diverged.
        TaskFailures: experts that failed on a remote executor (after the others were written).
    """
    check_config_fits(config, dataset)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"expert directory {str(directory)!r} exists and is not a directory")
    layout = model_layout(config.model, dataset)
    num_params = layout_numel(layout)
    stored = None
    if (directory / MANIFEST).is_file():
        stored = ExpertStore.open(directory)
        stored.check_compatible(dataset, layout)
        check_same_training(stored.config, config, directory)
    elif finished_indices(directory):
        raise UserError(f"{str(directory)!r} holds expert files but no {MANIFEST}; choose an empty directory")
    done = set(finished_indices(directory))
    missing = [i for i in range(config.num_experts) if i not in done]

    per_expert = storage_bytes(1, config.epochs, num_params)
    needed = per_expert * len(missing)
    free = shutil.disk_usage(_existing_ancestor(directory)).free
    notice(
        f"experts: {config.num_experts} x {config.epochs + 1} snapshots x {num_params:,} parameters x 4 B = "
        f"{human_bytes(per_expert * config.num_experts)} ({human_bytes(per_expert)} per expert); "
        f"{len(missing)} to train need {human_bytes(needed)}, {human_bytes(free)} free in {directory}"
    )
    if needed > free:
        raise UserError(
            f"not enough disk space for the experts: {human_bytes(needed)} needed, {human_bytes(free)} "
            f"free in {directory}; free some space, choose another --output (or $DCBENCH_CACHE), or ask "
            "for fewer experts or epochs"
        )
    directory.mkdir(parents=True, exist_ok=True)
    if stored is None or stored.config.num_experts < config.num_experts:
        origin = {"kind": "trained"}
        if stored is not None and stored.origin.get("kind", "trained") != "trained":
            origin = {**stored.origin, "kind": "trained+imported"}
        write_manifest(directory, manifest_metadata(config, dataset, layout, origin), dataset.preprocessing)

    key = config.key(dataset.preprocessing, layout)
    executor = current_executor()
    shared = executor.share(dataset) if missing else None
    tasks = [
        Task(
            name=expert_filename(index).rsplit(".", 1)[0],
            fn=_expert_task,
            args=(shared, config, index, device),
            device=str(device),
            units=config.epochs,
            on_unit="on_epoch",
        )
        for index in missing
    ]
    failures = []
    outcomes = executor.map(
        tasks,
        desc="experts",
        progress=progress,
        log_dir=directory / "logs",
        unit="epoch",
        initial=(config.num_experts - len(missing)) * config.epochs,
    )
    for outcome in outcomes:
        if not outcome.ok:
            failures.append(outcome)
            continue
        index = missing[outcome.index]
        trajectory, accuracy, seconds, threads = outcome.value
        write_expert(
            directory,
            index,
            trajectory,
            {
                "key": key,
                "seed": expert_seed(config.seed, index),
                "epochs": config.epochs,
                "num_params": num_params,
                "val_accuracy": accuracy,
                "train_time_s": round(seconds, 3),
                "device": str(device),
                "threads": threads,
                "source": None,
            },
        )
    if failures:
        advice = "; the finished experts are kept, and the same command again trains only the missing ones"
        raise TaskFailures(failures, total=len(tasks), what="experts", advice=advice)
    return ExpertStore.open(directory, max_experts=config.num_experts)


def ensure_experts(
    dataset: Dataset,
    config: ExpertConfig,
    cache_dir: Path | str,
    device: torch.device | str,
    notice: Notice = print,
    progress: bool = True,
) -> ExpertStore:
    """The experts of ``config`` from the cache, training the missing ones first.

    The cache directory is ``cache_dir / "experts" / f"{config.dataset}-{config.model}-{key}"``
    (:func:`expert_directory`). A method calls this in ``reset``.

    Returns:
        The store, limited to experts ``0 .. config.num_experts - 1``; all of them are present.

    Raises:
        UserError: see :func:`train_experts`.
    """
    check_config_fits(config, dataset)
    directory = expert_directory(cache_dir, config, dataset)
    if (directory / MANIFEST).is_file():
        store = ExpertStore.open(directory, max_experts=config.num_experts)
        if store.num_experts >= config.num_experts:
            store.check_compatible(dataset, model_layout(config.model, dataset))
            return store
        notice(
            f"training {config.num_experts - store.num_experts} more expert trajectories for "
            f"{config.dataset}/{config.model} ({store.num_experts} already cached in {directory})"
        )
    else:
        notice(
            f"training {config.num_experts} expert trajectories for {config.dataset}/{config.model} "
            f"({config.epochs} epochs each; first run only; cached in {directory})"
        )
    return train_experts(dataset, config, directory, device, progress=progress, notice=notice)


def check_config_fits(config: ExpertConfig, dataset: Dataset) -> None:
    """Raise a UserError unless ``config`` names ``dataset`` and its ZCA state."""
    if config.dataset != dataset.name:
        raise UserError(f"expert config is for dataset {config.dataset!r} but the data is {dataset.name!r}")
    has_zca = dataset.preprocessing.zca is not None
    if config.zca != has_zca:
        raise UserError(
            f"expert config says zca={config.zca} but the {dataset.name} data is "
            f"{'ZCA-whitened' if has_zca else 'not ZCA-whitened'}: load the dataset with zca={config.zca}"
        )


def check_same_training(stored: ExpertConfig, wanted: ExpertConfig, directory: Path) -> None:
    """Raise a UserError if two configs differ in anything but ``num_experts``."""
    a, b = stored.training_fields(), wanted.training_fields()
    diff = [f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b.get(k)]
    if diff:
        raise UserError(
            f"{str(directory)!r} holds experts trained with another config ({'; '.join(diff)}); "
            "choose another --output or remove that directory"
        )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


__all__ = [
    "check_config_fits",
    "ensure_experts",
    "expert_directory",
    "expert_seed",
    "train_experts",
    "train_one_expert",
]
