"""``dcbench eval FILE``: evaluate a saved synthetic set with the protocol its metadata implies, as ``run`` does.

The set is evaluated with the one lr rule, beside the random real subset of the same IPC (hard
labels, the protocol's lr), and the record is saved (next to the file by default, never
overwritten without ``--overwrite``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcbench_tesla.data import dataset_spec, load_dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import evaluate_images, evaluation_lr, format_accuracy, protocol_for, random_real_subset
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.synthetic import SyntheticSet


def default_output(path: Path, protocol: str, seed: int) -> Path:
    """``<file stem>.eval-<protocol>-seed<S>.json`` next to the set file."""
    return Path(path).with_name(f"{Path(path).stem}.eval-{protocol}-seed{seed}.json")


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
    baseline: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the set in ``path`` on its dataset's test split, under its own preprocessing.

    The test images are re-expressed in the set's normalisation / ZCA state (from the file), so a
    set made elsewhere is evaluated as it was made. The lr follows the one rule of
    :func:`~dcbench_tesla.evaluation.evaluation_lr` with the method recorded in the file.

    Raises:
        UserError: a bad file, a dataset or model that is not here, or an existing output without
            ``overwrite``.
    """
    from dcbench_tesla.checks import resolve_device, set_threads
    from dcbench_tesla.models import MODELS
    from dcbench_tesla.provenance import provenance

    set_threads(threads)
    syn = SyntheticSet.load(path)
    spec = dataset_spec(syn.dataset)
    torch_device = resolve_device(device)
    chosen = protocol_for(syn.dataset, protocol, num_models, epochs)
    output = Path(output) if output is not None else default_output(path, chosen.name, seed)
    if output.exists() and not overwrite:
        raise UserError(f"{str(output)!r} exists; pass --overwrite to replace it, or choose another --output")
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
    method = syn.method.get("id", "unknown method")
    print(
        f"{path}: {method} on {syn.dataset}, IPC {syn.ipc}, {syn.label_kind} labels, lr {eval_lr:.4g} -> {output}\n"
        f"  evaluation: {chosen.name}, {chosen.num_models} model(s) x {chosen.epochs} epochs on {', '.join(arches)}",
        flush=True,
    )
    common = (dataset, arches)
    result = evaluate_images(syn.images, syn.labels, *common, eval_lr, chosen, seed, torch_device, progress, "evaluate")
    base = None
    if baseline and syn.ipc > 0 and not syn.method.get("role") == "baseline":
        images, labels = random_real_subset(dataset, syn.ipc, seed)
        base = evaluate_images(
            images, labels, *common, chosen.fixed_lr, chosen, seed, torch_device, progress, "random real subset"
        )
    record = {
        "file": str(path),
        "evaluation": result.to_dict(),
        "baseline": base.to_dict() if base is not None else None,
        "provenance": provenance(torch_device),
    }
    for name, res in result.by_model.items():
        line = f"  {name}: test accuracy {format_accuracy(res)} %  (lr {eval_lr:.4g})"
        if base is not None:
            line += f"   random real subset: {format_accuracy(base.by_model[name])} %  (lr {chosen.fixed_lr:.4g})"
        print(line)
    write_json_atomic(output, record)
    print(f"saved {output}")
    return record
