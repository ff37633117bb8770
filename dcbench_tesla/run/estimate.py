"""Cost before work: how long each phase of a run should take, and whether it is far above the cards.

Methods report the work of their phases in image-steps (one forward + backward of one image of the
dataset's default model, see ``Distiller.estimate_work``); evaluation's work is counted here, per
architecture. A short calibration (a few SGD steps of each architecture on this machine) turns
image-steps into seconds: a ResNet-18 step can cost ten ConvNet steps. The figures are estimates,
printed as such.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from dcbench_tesla.errors import UserError

#: A phase more than this many times the largest the dataset's config cards ask for needs ``--yes``.
FAR_ABOVE = 4.0
_CALIBRATION_BATCH = 32
_CALIBRATION_STEPS = 3


def seconds_per_image_step(model_name: str, dataset: Any, device: Any) -> float:
    """Measured seconds of one SGD step per image for ``model_name`` on ``dataset``'s images here."""
    import torch
    import torch.nn.functional as F

    from dcbench_tesla.models import build_model

    c, h, _ = dataset.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(model_name, channels=c, num_classes=dataset.num_classes, image_size=h).to(device)
        x = dataset.train_images[:_CALIBRATION_BATCH].to(device)
        y = dataset.train_labels[:_CALIBRATION_BATCH].to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        times = []
        for _ in range(_CALIBRATION_STEPS + 1):
            start = time.perf_counter()
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2] / x.shape[0]


def calibrate(models: list[str], dataset: Any, device: Any) -> dict[str, float]:
    """Seconds per image-step of each architecture in ``models`` here (one short calibration each)."""
    return {name: seconds_per_image_step(name, dataset, device) for name in dict.fromkeys(models)}


def whole_pool_work(run: Any, dataset: Any) -> dict[str, float]:
    """Image-steps of evaluating the whole training pool, per architecture (K models x epochs x pool)."""
    per_model = run.protocol.num_models * run.protocol.epochs * dataset.train_images.shape[0]
    return {name: float(per_model) for name in run.models}


def evaluation_work(run: Any, dataset: Any, real: bool) -> dict[str, dict[str, float]]:
    """Image-steps of the evaluations, per phase and architecture: K models x epochs x images per set evaluated.

    Counts the set, its hard-label twin (soft sets), the random subset under both label rules, and
    the whole training pool when ``real`` and not cached.
    """
    from dcbench_tesla.evaluation import whole_pool_cached

    request, protocol = run.request, run.protocol
    per_set = protocol.num_models * protocol.epochs * dataset.num_classes * request.ipc
    sets = 1 + (2 if request.baseline and not run.spec.is_baseline else 0)
    work = {"evaluation": {name: float(per_set * sets) for name in run.models}}
    split = request.eval_split
    if real and not whole_pool_cached(
        dataset, run.models, protocol, request.seed, split=split, cache_dir=request.cache_dir
    ):
        work["whole pool (hard labels, cached after)"] = whole_pool_work(run, dataset)
    return work


def seconds(work: dict[str, float], step_seconds: dict[str, float]) -> float:
    """Seconds of ``{architecture: image-steps}`` at each architecture's calibrated speed."""
    return sum(units * step_seconds[name] for name, units in work.items())


def phase_seconds(
    method_work: dict[str, float],
    evaluation: dict[str, dict[str, float]],
    step_seconds: dict[str, float],
    default_model: str,
) -> dict[str, float]:
    """Estimated seconds of every phase: the method's at ``default_model``'s speed, evaluation's per architecture."""
    estimates = {phase: units * step_seconds[default_model] for phase, units in method_work.items()}
    estimates.update({phase: seconds(per_model, step_seconds) for phase, per_model in evaluation.items()})
    return estimates


def card_work(run: Any, dataset: Any, context: Any) -> dict[str, float]:
    """The largest work of each phase over the method's config cards for this dataset (uncached)."""
    from dcbench_tesla.config import build_options
    from dcbench_tesla.method import build_distiller, distiller_class

    largest: dict[str, float] = {}
    for card in run.spec.config_cards:
        if card.dataset != run.request.dataset:
            continue
        options = build_options(distiller_class(run.spec).Config, {**run.spec.kwargs, **card.options}, owner="card")
        distiller = build_distiller(run.spec, options, context)
        for phase, units in distiller.estimate_work(dataset, card.ipc, cached=False).items():
            largest[phase] = max(largest.get(phase, 0.0), units)
    return largest


def far_above_cards(work: dict[str, float], cards: dict[str, float]) -> dict[str, float]:
    """Phases whose work is more than :data:`FAR_ABOVE` times the cards' largest, with the ratio."""
    return {
        phase: units / cards[phase]
        for phase, units in work.items()
        if cards.get(phase) and units > FAR_ABOVE * cards[phase]
    }


def human_seconds(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"3.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def confirm_or_refuse(what: str, yes: bool) -> None:
    """Go on if ``yes``; ask on a terminal; refuse (exit 2 naming ``--yes``) without one.

    Raises:
        UserError: no terminal and no ``--yes``, or the user said no.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{what}. Nothing was started; pass --yes to run it anyway.")
    answer = input(f"{what}. Continue? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UserError("stopped before starting (answer was not yes); nothing was written")
