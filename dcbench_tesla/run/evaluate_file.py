"""``dcbench eval FILE``: evaluate a saved synthetic set with the protocol its metadata implies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcbench_tesla.data import dataset_spec, load_dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import evaluate_images, evaluation_lr, format_accuracy, protocol_for
from dcbench_tesla.files import write_json_atomic
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
    file), so a set made elsewhere is evaluated as it was made. The lr follows the one rule of
    :func:`~dcbench_tesla.evaluation.evaluation_lr` with the method recorded in the file.
    """
    from dcbench_tesla.checks import resolve_device, set_threads
    from dcbench_tesla.models import MODELS
    from dcbench_tesla.provenance import provenance

    set_threads(threads)
    syn = SyntheticSet.load(path)
    spec = dataset_spec(syn.dataset)
    if output is not None and Path(output).exists():
        raise UserError(f"--output {str(output)!r} exists; choose another path (results are never overwritten)")
    torch_device = resolve_device(device)
    chosen = protocol_for(syn.dataset, protocol, num_models, epochs)
    arches = list(dict.fromkeys(models or [spec.default_model]))
    for name in arches:
        MODELS.get(name)
    options = {"image_size": syn.images.shape[-1]} if "image_size" in spec.loader_options else {}
    dataset = load_dataset(syn.dataset, data_root, **options).with_preprocessing(syn.preprocessing)
    if dataset.classes != syn.classes:
        raise UserError(f"{str(path)!r}: its class list does not match dataset {syn.dataset!r} on disk")
    if tuple(syn.images.shape[1:]) != dataset.image_shape:
        raise UserError(
            f"{str(path)!r}: images {tuple(syn.images.shape[1:])} but {syn.dataset} has {dataset.image_shape}"
        )
    eval_lr = evaluation_lr(syn.lr, syn.method.get("eval_lr", "learned"), lr, chosen)
    result = evaluate_images(syn.images, syn.labels, dataset, arches, eval_lr, chosen, seed, torch_device, True)
    record = {"file": str(path), "evaluation": result.to_dict(), "provenance": provenance(torch_device)}
    for name, res in result.by_model.items():
        print(f"{path}: {name}: test accuracy {format_accuracy(res)} % ({chosen.num_models} models, lr {eval_lr:.4g})")
    if output is not None:
        write_json_atomic(output, record)
    return record
