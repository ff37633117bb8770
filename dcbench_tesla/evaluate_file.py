"""``dcbench eval FILE``: evaluate a saved synthetic set with the protocol its metadata implies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.data import DATASETS, load_dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import evaluate_images, format_accuracy, protocol_for
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.provenance import provenance
from dcbench_tesla.runner import check_models, resolve_device
from dcbench_tesla.synthetic import SyntheticSet


def evaluate_file(
    path: Path,
    models: list[str] | None = None,
    protocol: str | None = None,
    num_models: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    data_root: Path | None = None,
    output: Path | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluate the set in ``path`` on its dataset's test split, under its own preprocessing.

    The test images are re-expressed in the set's normalisation / ZCA state (from the
    file), so a set made elsewhere is evaluated as it was made.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    syn = SyntheticSet.load(path)
    if syn.dataset not in DATASETS:
        raise UserError(f"{str(path)!r} was made on dataset {syn.dataset!r}, which is not registered here")
    if output is not None and Path(output).exists():
        raise UserError(f"--output {str(output)!r} exists; choose another path (results are never overwritten)")
    torch_device = resolve_device(device)
    chosen = protocol_for(syn.dataset, protocol, num_models, epochs)
    arches = check_models(models or [DATASETS.get(syn.dataset).default_model])
    dataset = load_dataset(syn.dataset, data_root).with_preprocessing(syn.preprocessing)
    if dataset.classes != syn.classes:
        raise UserError(f"{str(path)!r}: its class list does not match dataset {syn.dataset!r} on disk")
    if tuple(syn.images.shape[1:]) != dataset.image_shape:
        raise UserError(
            f"{str(path)!r}: images {tuple(syn.images.shape[1:])} but {syn.dataset} has {dataset.image_shape}"
        )
    eval_lr = lr if lr is not None else (syn.lr if syn.lr is not None else chosen.fixed_lr)
    result = evaluate_images(syn.images, syn.labels, dataset, arches, eval_lr, chosen, seed, torch_device, True)
    record = {"file": str(path), "evaluation": result.to_dict(), "provenance": provenance(torch_device)}
    for name, res in result.by_model.items():
        print(f"{path}: {name}: test accuracy {format_accuracy(res)} % ({chosen.num_models} models, lr {eval_lr:.4g})")
    if output is not None:
        write_json_atomic(output, record)
    return record
