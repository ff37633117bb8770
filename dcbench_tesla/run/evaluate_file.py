"""``dcbench eval FILE``: evaluate a saved synthetic set with the protocol its metadata implies, as ``run`` does.

The set is evaluated with the one lr rule, beside the random real subset of the same IPC (hard
labels, the protocol's lr), and the record is saved (next to the file by default, never
overwritten without ``--overwrite``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from dcbench_tesla.data import Dataset, dataset_spec, load_dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import whole_pool_cached
from dcbench_tesla.files import write_json_atomic
from dcbench_tesla.protocols import evaluation_lr, protocol_for
from dcbench_tesla.scores import DEFAULT_DDRS_WEIGHT, check_weight, evaluate_with_scores, same_rule_labels
from dcbench_tesla.synthetic import SyntheticSet


def default_output(path: Path, protocol: str, seed: int) -> Path:
    """``<file stem>.eval-<protocol>-seed<S>.json`` next to the set file."""
    return Path(path).with_name(f"{Path(path).stem}.eval-{protocol}-seed{seed}.json")


def file_same_rule_labels(syn: SyntheticSet, dataset: Dataset, ipc: int, seed: int, device: Any) -> Tensor | None:
    """The same-rule labels of the random subset beside a saved set, or None when they cannot be had.

    A hard-labelled set's rule is hard labels. For soft labels the set's method (looked up by its id
    in the registry, never imported from the file) is rebuilt with the options the file records and
    reset on the data (finding its experts in the cache, or training them, as ``dcbench run`` would),
    and its ``relabel`` hook labels the subset.
    """
    from dcbench_tesla.config import build_options
    from dcbench_tesla.distiller import RunContext
    from dcbench_tesla.evaluation import random_real_subset
    from dcbench_tesla.method import build_distiller, distiller_class, spec

    method = str(syn.method.get("id", ""))
    if syn.label_kind == "hard":
        return random_real_subset(dataset, ipc, seed)[1]
    try:
        method_spec = spec(method)
        # a run records its config as {"options": ...}; a set packaged by a bare distiller holds the options
        options = syn.config.get("options", syn.config)
        built = build_options(distiller_class(method_spec).Config, dict(options), owner=f"method {method!r}")
        distiller = build_distiller(method_spec, built, RunContext(device=device))
        try:
            distiller.reset(dataset, ipc, syn.seed)
            return same_rule_labels(distiller, dataset, ipc, seed, method)
        finally:
            distiller.close()
    except UserError as exc:
        print(f"notice: no random subset under the set's own label rule (so no IOR or DDRS): {exc}")
        return None


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
    real: bool | None = None,
    ddrs_weight: float = DEFAULT_DDRS_WEIGHT,
) -> dict[str, Any]:
    """Evaluate the set in ``path`` on its dataset's test split, under its own preprocessing, with its scores.

    The data are re-expressed in the set's normalisation / ZCA state (from the file), so a set made
    elsewhere is evaluated as it was made. The lr follows the one rule of
    :func:`~dcbench_tesla.protocols.evaluation_lr` with the method recorded in the file. Beside it,
    as in ``dcbench run``: the set with hard labels, the random real subset of its IPC (hard labels,
    and its own label rule: see :func:`file_same_rule_labels`) unless ``baseline`` is False, the
    whole training pool (cached) unless ``real`` is False, and HLR, IOR and DDRS.

    Raises:
        UserError: a bad file, a dataset or model that is not here, or an existing output without
            ``overwrite``.
    """
    from dcbench_tesla.checks import resolve_device, set_threads
    from dcbench_tesla.models import MODELS
    from dcbench_tesla.provenance import provenance
    from dcbench_tesla.run.runner import score_lines

    check_weight(ddrs_weight)
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
    ipc = syn.ipc or max(1, syn.images.shape[0] // syn.num_classes)
    is_baseline = syn.method.get("role") == "baseline"
    method = syn.method.get("id", "unknown method")
    print(
        f"{path}: {method} on {syn.dataset}, IPC {ipc}, {syn.label_kind} labels, lr {eval_lr:.4g} -> {output}\n"
        f"  evaluation: {chosen.name}, {chosen.num_models} model(s) x {chosen.epochs} epochs on {', '.join(arches)}",
        flush=True,
    )
    if real is None:
        real = whole_pool_cached(dataset, arches, chosen, seed)
        if not real:
            print("  no HLR/DDRS: the whole training pool with hard labels is not cached yet; --real computes it once")
    fair = evaluate_with_scores(
        syn.images,
        syn.labels,
        eval_lr,
        dataset,
        arches,
        chosen,
        seed,
        torch_device,
        ipc=ipc,
        same_rule_labels=file_same_rule_labels(syn, dataset, ipc, seed, torch_device) if baseline else None,
        hard_baseline=baseline and not is_baseline,
        real=real,
        progress=progress,
        ddrs_weight=ddrs_weight,
    )
    record = {"file": str(path), **fair.records(), "provenance": provenance(torch_device)}
    print("\n".join(score_lines(fair, "test")))
    write_json_atomic(output, record)
    print(f"saved {output}")
    return record
