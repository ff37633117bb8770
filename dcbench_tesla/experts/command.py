"""What ``dcbench experts`` does: train (or import) expert trajectories where ``dcbench run`` finds them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    yes: bool = False,
    notice: Callable[[str], None] = print,
) -> ExpertStore:
    """Train the experts of a config (or import upstream buffers) and print where they are.

    Without ``output`` the experts go to the cache directory :func:`ensure_experts` uses
    (``$DCBENCH_CACHE/experts/<dataset>-<model>-<key>``), so a later ``dcbench run`` with the same
    settings finds them. Unset values take the settings the dataset's config cards read
    (:func:`card_expert_config`), else :class:`ExpertConfig`'s defaults (50 epochs, lr 0.01,
    batch 256) and the dataset's (model, number of experts). Training far more than the cards
    read asks for ``yes``.

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
    asked = {"model": model, "num_experts": num_experts, "epochs": epochs, "lr": lr, "batch_size": batch_size}
    from_cards = card_expert_config(data)
    if from_cards is not None:
        card_config, where = from_cards
        changes = {key: value for key, value in {**asked, "seed": seed}.items() if value is not None}
        config = dataclasses.replace(card_config, **changes)
        notice(
            f"experts: the settings {where} reads" + (" (with your flags on top)" if changes.keys() - {"seed"} else "")
        )
        _check_cost(config, card_config, data, yes)
    else:
        config = ExpertConfig.for_dataset(data, seed=seed, **asked)
    if output is not None:
        store = train_experts(data, config, output, torch_device, progress=progress, notice=notice)
    else:
        store = ensure_experts(data, config, cache_dir, torch_device, notice=notice, progress=progress)
    accuracies = store.val_accuracies()
    summary = ""
    if accuracies:
        mean = sum(accuracies) / len(accuracies)
        summary = f"; final validation accuracy {100 * mean:.2f}% (mean of {len(accuracies)})"
    notice(f"{store.describe()}{summary}")
    return store


def card_expert_config(dataset: Any) -> tuple[ExpertConfig, str] | None:
    """The experts the first config card of ``dataset`` (method by method, IPC by IPC) reads, and which card.

    Cards are tried in registry order; one whose ZCA setting differs from the loaded data is skipped.
    """
    from dcbench_tesla.config import build_options
    from dcbench_tesla.distiller import RunContext
    from dcbench_tesla.method import METHODS, build_distiller, distiller_class, spec

    has_zca = dataset.preprocessing.zca is not None
    for method_id in METHODS.names():
        method_spec = spec(method_id)
        cards = sorted((c for c in method_spec.config_cards if c.dataset == dataset.name), key=lambda c: c.ipc)
        for card in cards:
            if bool(card.zca) != has_zca:
                continue
            cls = distiller_class(method_spec)
            options = build_options(cls.Config, {**method_spec.kwargs, **card.options}, owner=f"method {method_id!r}")
            config = build_distiller(method_spec, options, RunContext()).expert_config(dataset)
            if config is not None:
                return config, f"the {method_id} card for {dataset.name} IPC {card.ipc}"
    return None


def _check_cost(config: ExpertConfig, card_config: ExpertConfig, dataset: Any, yes: bool) -> None:
    """Ask for ``yes`` before training far more image-steps than the card's experts need."""
    from dcbench_tesla.run.estimate import FAR_ABOVE, confirm_or_refuse

    ratio = (config.num_experts * config.epochs) / (card_config.num_experts * card_config.epochs)
    if ratio > FAR_ABOVE:
        n = dataset.train_images.shape[0]
        confirm_or_refuse(
            f"{config.num_experts} experts x {config.epochs} epochs x {n} images is {ratio:.0f}x what the "
            f"config cards of {dataset.name} read ({card_config.num_experts} x {card_config.epochs})",
            yes,
        )


__all__ = ["card_expert_config", "experts_command"]
