"""``check_method``: a conformance checker plugin authors run on their own method.

Like Gymnasium's ``check_env``: builds the method, resets it twice under one seed,
steps it, and checks determinism, info keys, exported shapes and finite values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dcbench_tesla.data import Dataset, load_dataset
from dcbench_tesla.distiller import RunContext
from dcbench_tesla.errors import UserError
from dcbench_tesla.method import make
from dcbench_tesla.synthetic import SyntheticSet


class ConformanceError(UserError):
    """A method broke the Distiller contract."""


def _fail(method_id: str, what: str) -> None:
    raise ConformanceError(f"method {method_id!r} fails the Distiller contract: {what}")


def _check_info(method_id: str, info: Any, required: tuple[str, ...], where: str) -> None:
    if not isinstance(info, dict):
        _fail(method_id, f"{where} must return a dict, got {type(info).__name__}")
    missing = [k for k in required if k not in info]
    if missing:
        _fail(method_id, f"{where} info lacks required keys {missing}")
    for key, value in info.items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else float("nan")
        if isinstance(value, (int, float)) and not math.isfinite(float(value)):
            _fail(method_id, f"{where} info[{key!r}] is not finite ({value})")


def _check_set(method_id: str, syn: Any, dataset: Dataset, ipc: int) -> SyntheticSet:
    if not isinstance(syn, SyntheticSet):
        _fail(method_id, f"synthetic_set() must return a SyntheticSet, got {type(syn).__name__}")
    expected = (dataset.num_classes * ipc, *dataset.image_shape)
    if tuple(syn.images.shape) != expected:
        _fail(method_id, f"synthetic images have shape {tuple(syn.images.shape)}, expected {expected}")
    try:
        syn.validate()
    except UserError as exc:
        _fail(method_id, str(exc))
    if syn.dataset != dataset.name:
        _fail(method_id, f"synthetic set names dataset {syn.dataset!r}, expected {dataset.name!r}")
    return syn


def _run_episode(method_id: str, dataset: Dataset, ipc: int, seed: int, steps: int, overrides: dict) -> SyntheticSet:
    distiller = make(method_id, RunContext(), **overrides)
    required = tuple(getattr(distiller, "info_keys", ()))
    try:
        _check_info(method_id, distiller.reset(dataset, ipc, seed), (), "reset()")
        for _ in range(steps):
            _check_info(method_id, distiller.step(), required, "step()")
        return _check_set(method_id, distiller.synthetic_set(), dataset, ipc)
    finally:
        distiller.close()


def check_method(
    method_id: str,
    dataset: Dataset | None = None,
    ipc: int = 1,
    seed: int = 0,
    steps: int = 2,
    **overrides: Any,
) -> None:
    """Raise ConformanceError unless ``method_id`` honours the Distiller contract.

    Args:
        method_id: Registered method name.
        dataset: Dataset to run on (default: the embedded digits).
        ipc: Images per class.
        seed: Seed of both episodes.
        steps: Outer iterations per episode.
        **overrides: Method options (keep the method small and fast here).
    """
    dataset = dataset if dataset is not None else load_dataset("digits")
    first = _run_episode(method_id, dataset, ipc, seed, steps, overrides)
    second = _run_episode(method_id, dataset, ipc, seed, steps, overrides)
    if not torch.equal(first.images, second.images) or not torch.equal(first.labels, second.labels):
        _fail(
            method_id,
            "two episodes with the same seed produced different synthetic sets (seed every draw in reset)",
        )
