"""What ``dcbench experts`` does: train (or import) expert trajectories where ``dcbench run`` finds them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dcbench_tesla.errors import UserError
from dcbench_tesla.experts.config import ExpertConfig
from dcbench_tesla.experts.store import ExpertStore
from dcbench_tesla.experts.training import ensure_experts, train_experts
from dcbench_tesla.experts.upstream import import_upstream


def experts_command(
    *,
    dataset: str,
    model: str | None = None,
    num_experts: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    zca: bool = False,
    seed: int = 0,
    data_root: Path | None = None,
    image_size: int | None = None,
    output: Path | None = None,
    device: str | None = None,
    threads: int | None = None,
    imports: Sequence[Path] = (),
    progress: bool = True,
    notice: Callable[[str], None] = print,
) -> ExpertStore:
    """Train the experts of a config (or import upstream buffers) and print where they are.

    Without ``output`` the experts go to the cache directory :func:`ensure_experts` uses
    (``$DCBENCH_CACHE/experts/<dataset>-<model>-<key>``), so a later ``dcbench run`` with the same
    settings finds them. Unset values take :class:`ExpertConfig`'s defaults (50 epochs, lr 0.01,
    batch 256) and the dataset's defaults (model, number of experts).

    Raises:
        UserError: any invalid input (unknown dataset or model, bad values, unreadable buffers, ...).
    """
    from dcbench_tesla.checks import resolve_device, set_threads
    from dcbench_tesla.data import default_cache_dir, load_dataset

    set_threads(threads)
    torch_device = resolve_device(device)
    cache_dir = default_cache_dir()
    data = load_dataset(dataset, data_root, zca=zca, cache_dir=cache_dir, image_size=image_size)
    if imports:
        if num_experts is not None:
            raise UserError("--num-experts does not apply to --import (every trajectory in the files is imported)")
        config = ExpertConfig.for_dataset(data, model=model, num_experts=1)
        store = import_upstream(
            list(imports),
            data,
            config.model,
            output,
            cache_dir=cache_dir,
            hyper={"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed},
            notice=notice,
        )
        hyper_note = "" if lr is not None else " (recorded with upstream's defaults: lr 0.01, batch 256)"
        notice(f"{store.describe()}{hyper_note}")
        return store
    config = ExpertConfig.for_dataset(
        data, model=model, num_experts=num_experts, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed
    )
    if output is not None:
        store = train_experts(data, config, output, torch_device, progress=progress, notice=notice)
    else:
        store = ensure_experts(data, config, cache_dir, torch_device, notice=notice, progress=progress)
    accuracies = store.test_accuracies()
    summary = ""
    if accuracies:
        mean = sum(accuracies) / len(accuracies)
        summary = f"; final test accuracy {100 * mean:.2f}% (mean of {len(accuracies)})"
    notice(f"{store.describe()}{summary}")
    return store


__all__ = ["experts_command"]
