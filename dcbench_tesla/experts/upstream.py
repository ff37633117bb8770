"""Importing the replay buffers of the upstream MTT / TESLA code (``replay_buffer_<n>.pt``).

Upstream ``buffer.py`` ``torch.save``s a Python list of trajectories; a trajectory is a list with
one entry per snapshot (initialisation, then after every epoch), and a snapshot is the list of the
model's parameter tensors in ``model.parameters()`` order. Those files are pickles: they are read
here with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers and
refuses anything that would run code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcbench_tesla.data import Dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.experts.config import ExpertConfig, layout_numel, model_layout
from dcbench_tesla.experts.store import (
    MANIFEST,
    ExpertStore,
    finished_indices,
    manifest_metadata,
    write_expert,
    write_manifest,
)
from dcbench_tesla.experts.training import check_same_training, expert_directory

_BUFFER_NUMBER = re.compile(r"replay_buffer_(\d+)\.pt$")


def find_buffers(paths: Sequence[Path | str]) -> list[Path]:
    """Expand directories into their ``replay_buffer_<n>.pt`` files (in numeric order).

    Raises:
        UserError: a path does not exist, or a directory holds no replay buffer.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            buffers = [p for p in path.iterdir() if _BUFFER_NUMBER.search(p.name)]
            if not buffers:
                raise UserError(f"{str(path)!r} holds no replay_buffer_<n>.pt files")
            found += sorted(buffers, key=lambda p: int(_BUFFER_NUMBER.search(p.name).group(1)))  # type: ignore[union-attr]
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"replay buffer {str(path)!r} does not exist")
    return found


def load_buffer(path: Path) -> Any:
    """``torch.load`` a replay buffer with ``weights_only=True`` (no code can run).

    Raises:
        UserError: the file carries code or objects other than tensors and containers, or is not
            a ``torch.save`` file.
    """
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{str(path)!r} carries code or objects other than tensors and lists, or is not a replay "
            f"buffer; refused (dcbench never runs code from files): {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # a damaged file fails anywhere in the unpickler (weights_only ran no code)
        raise UserError(
            f"{str(path)!r} is not a readable replay buffer (a torch.save list of trajectories): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def flatten_trajectory(trajectory: Any, layout: dict[str, Any], where: str) -> Tensor:
    """Stack one upstream trajectory into a float32 ``(snapshots, P)`` tensor.

    Args:
        trajectory: List of snapshots; a snapshot is a list of parameter tensors in
            ``model.parameters()`` order (or one already flat tensor).
        layout: The model's layout; sizes (and shapes, for lists) are checked against it.
        where: Names the trajectory in error messages.

    Raises:
        UserError: not a list of snapshots, or a parameter count or shape that differs from the model.
    """
    if not isinstance(trajectory, (list, tuple)) or len(trajectory) < 2:
        raise UserError(f"{where}: expected a list of at least 2 parameter snapshots, got {_kind(trajectory)}")
    expected_p = layout_numel(layout)
    shapes = [list(s) for s in layout["shapes"]]
    rows = []
    for t, snapshot in enumerate(trajectory):
        if isinstance(snapshot, Tensor):
            parts = [snapshot]
        elif isinstance(snapshot, (list, tuple)) and all(isinstance(p, Tensor) for p in snapshot) and snapshot:
            parts = list(snapshot)
        else:
            raise UserError(f"{where}, snapshot {t}: expected a list of parameter tensors, got {_kind(snapshot)}")
        numel = sum(p.numel() for p in parts)
        if numel != expected_p:
            raise UserError(
                f"{where}, snapshot {t}: {numel:,} parameters, but the model's layout has {expected_p:,}: "
                "pass the --model (and --dataset) the buffer was trained with"
            )
        if len(parts) > 1 and [list(p.shape) for p in parts] != shapes:
            bad = next(
                (i for i, (p, s) in enumerate(zip(parts, shapes, strict=False)) if list(p.shape) != s),
                min(len(parts), len(shapes)),
            )
            got = list(parts[bad].shape) if bad < len(parts) else None
            want = shapes[bad] if bad < len(shapes) else None
            raise UserError(
                f"{where}, snapshot {t}: parameter {bad} has shape {got}, the model's "
                f"{layout['names'][bad] if bad < len(shapes) else '(none)'} has {want}"
            )
        if any(not p.is_floating_point() for p in parts):
            raise UserError(f"{where}, snapshot {t}: parameters must be floating-point tensors")
        rows.append(torch.cat([p.detach().reshape(-1).float() for p in parts]))
    out = torch.stack(rows)
    if not bool(torch.isfinite(out).all()):
        raise UserError(f"{where}: contains NaN or inf parameters")
    return out


def import_upstream(
    paths: Sequence[Path | str],
    dataset: Dataset,
    model_name: str,
    output_dir: Path | str | None = None,
    *,
    cache_dir: Path | str | None = None,
    hyper: dict[str, Any] | None = None,
    notice: Callable[[str], None] = print,
) -> ExpertStore:
    """Import upstream MTT / TESLA replay buffers into an expert store.

    Trajectories are appended after the experts the store already holds; a trajectory already
    imported from the same file (same content hash and position) is skipped. The buffers do not
    record their normalisation: the dataset's current preprocessing is recorded (a notice says so).

    Args:
        paths: ``replay_buffer_<n>.pt`` files, or directories holding them.
        dataset: The dataset the buffers were trained on, preprocessed as they were.
        model_name: Model registry name of the buffers' network.
        output_dir: Store directory; None puts them where :func:`ensure_experts` looks for this
            config under ``cache_dir`` (so ``dcbench run`` finds them).
        cache_dir: Cache root for ``output_dir=None`` [``default_cache_dir()``].
        hyper: Training settings to record (``ExpertConfig`` fields: lr, batch_size, momentum,
            weight_decay, dsa_strategy, seed; upstream defaults otherwise). ``epochs`` is read from
            the buffers; if given here it must match them.
        notice: Prints one-line notices.

    Returns:
        The store (every expert file in it).

    Raises:
        UserError: a file carries code or is not a replay buffer, trajectories differ in length,
            the parameter count differs from the model, or the store holds other experts.
    """
    buffers = find_buffers(paths)
    if not buffers:
        raise UserError("no replay buffer files given to import")
    layout = model_layout(model_name, dataset)
    hyper = dict(hyper or {})
    expected_epochs = hyper.pop("epochs", None)
    for forbidden in ("dataset", "model", "num_experts", "zca"):
        if forbidden in hyper:
            raise UserError(f"{forbidden!r} is not a hyper-parameter to record; it comes from the data and model")

    directory: Path | None = Path(output_dir) if output_dir is not None else None
    config: ExpertConfig | None = None
    known: set[tuple[str, int]] = set()
    prior_origin: dict[str, Any] = {}
    key = ""
    next_index = 0
    imported = skipped = 0
    for path in buffers:
        digest = _sha256(path)
        data = load_buffer(path)
        if not isinstance(data, (list, tuple)) or not data:
            raise UserError(f"{str(path)!r} is not a replay buffer: expected a non-empty list of trajectories")
        for position, raw in enumerate(data):
            traj = flatten_trajectory(raw, layout, f"{path.name}, trajectory {position}")
            if config is None:
                epochs = traj.shape[0] - 1
                if expected_epochs is not None and int(expected_epochs) != epochs:
                    raise UserError(
                        f"{path.name} holds trajectories of {epochs} epochs ({epochs + 1} snapshots), "
                        f"not the {expected_epochs} asked for"
                    )
                config = ExpertConfig.for_dataset(
                    dataset, model=model_name, num_experts=len(data), epochs=epochs, **hyper
                )
                if directory is None:
                    from dcbench_tesla.data import default_cache_dir

                    directory = expert_directory(cache_dir or default_cache_dir(), config, dataset)
                known, next_index, prior_origin = _open_for_import(directory, config, dataset, layout)
                key = config.key(dataset.preprocessing, layout)
            if traj.shape[0] != config.epochs + 1:
                raise UserError(
                    f"{path.name}, trajectory {position}: {traj.shape[0]} snapshots, but the store's "
                    f"experts have {config.epochs + 1}; import buffers of one training run together"
                )
            if (digest, position) in known:
                skipped += 1
                continue
            write_expert(
                directory,  # type: ignore[arg-type]
                next_index,
                traj,
                {
                    "key": key,
                    "seed": None,
                    "epochs": config.epochs,
                    "num_params": layout_numel(layout),
                    "val_accuracy": None,
                    "source": {"file": path.name, "sha256": digest, "position": position},
                },
            )
            known.add((digest, position))
            next_index += 1
            imported += 1
        del data
    assert config is not None and directory is not None
    total = len(finished_indices(directory))
    final = ExpertConfig(**{**config.to_dict(), "num_experts": max(total, 1)})
    files = [str(f) for f in prior_origin.get("files", [])]
    files += [p.name for p in buffers if p.name not in files]
    kind = "imported" if prior_origin.get("kind", "imported") == "imported" else "trained+imported"
    origin = {"kind": kind, "files": files}
    write_manifest(directory, manifest_metadata(final, dataset, layout, origin), dataset.preprocessing)
    pre = dataset.preprocessing
    notice(
        f"imported {imported} trajectories ({skipped} already present) into {directory}; upstream buffers "
        f"do not record their normalisation: recorded as this run's {dataset.name} preprocessing "
        f"({'ZCA' if pre.zca is not None else 'mean/std, no ZCA'}) -- make sure they were trained that way"
    )
    return ExpertStore.open(directory)


def _open_for_import(
    directory: Path, config: ExpertConfig, dataset: Dataset, layout: dict[str, Any]
) -> tuple[set[tuple[str, int]], int, dict[str, Any]]:
    """Check ``directory`` accepts these experts (creating the store if needed).

    Returns:
        The ``(sha256, position)`` sources it already holds, the next free expert index, and the
        existing store's origin (empty for a new store).
    """
    if directory.exists() and not directory.is_dir():
        raise UserError(f"expert directory {str(directory)!r} exists and is not a directory")
    if not (directory / MANIFEST).is_file():
        if finished_indices(directory):
            raise UserError(f"{str(directory)!r} holds expert files but no {MANIFEST}; choose an empty directory")
        directory.mkdir(parents=True, exist_ok=True)
        origin = {"kind": "imported", "files": []}
        write_manifest(directory, manifest_metadata(config, dataset, layout, origin), dataset.preprocessing)
        return set(), 0, {}
    store = ExpertStore.open(directory)
    store.check_compatible(dataset, layout)
    check_same_training(store.config, config, directory)
    known = set()
    for i in range(store.num_experts):
        source = store.expert_metadata(i).get("source") or {}
        if "sha256" in source and "position" in source:
            known.add((str(source["sha256"]), int(source["position"])))
    indices = store.expert_indices
    return known, (indices[-1] + 1 if indices else 0), store.origin


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _kind(obj: Any) -> str:
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)}"
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__


__all__ = ["find_buffers", "flatten_trajectory", "import_upstream", "load_buffer"]
