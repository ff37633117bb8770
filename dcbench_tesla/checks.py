"""Checks every boundary shares: finite values, devices, thread counts.

Each rule lives here once; the CLI, the run loop, the conformance checker, the file
readers and the methods call these instead of repeating them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dcbench_tesla.errors import UserError

#: Most torch intra-op threads a run may ask for (far above any machine's cores; it only
#: stops values that crash the native thread pools).
MAX_THREADS = 1024
#: Bounds of the counts and values every boundary (CLI options, presets, method options) accepts:
#: far above any real run, low enough that no value overflows torch or numpy or runs "forever".
MAX_SEED = 2**32 - 1  # numpy's seed range; torch accepts it too
MAX_IPC = 100_000
MAX_ITERATIONS = 10_000_000
MAX_MODELS = 1_000
MAX_EPOCHS = 100_000
MAX_EVAL_LR = 10.0


def _as_number(value: Any) -> Any:
    """A one-element tensor or numpy scalar as a Python number; anything else unchanged."""
    if hasattr(value, "item") and callable(value.item):
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else getattr(value, "size", 1)
        if size == 1:
            return value.item()
    return value


def is_finite(value: Any) -> bool:
    """True unless ``value`` is a NaN/inf number or a tensor holding one (other values are fine)."""
    value = _as_number(value)
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if hasattr(value, "is_floating_point") and hasattr(value, "isfinite"):
        import torch

        return bool(torch.isfinite(value).all()) if value.is_floating_point() else True
    return True


def non_finite(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are not finite (see :func:`is_finite`)."""
    return {key: _as_number(value) for key, value in values.items() if not is_finite(value)}


def resolve_device(name: str | None) -> Any:
    """The torch device for ``--device`` (None: ``cuda`` when present, else ``cpu``).

    Raises:
        UserError: not a device name, or a device this torch build or machine cannot use
            (the message lists the devices available here).
    """
    import torch

    available = available_devices()
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {name!r} is not a torch device; available here: {', '.join(available)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} asked for, but no CUDA GPU is available here (torch {torch.__version__}, "
                f"CUDA {torch.version.cuda or 'none'}); use --device cpu (available: {', '.join(available)})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0..")
        return device
    if device.type != "cpu":
        raise UserError(
            f"--device {name}: dcbench runs on cpu and cuda only (not {device.type}); available: {', '.join(available)}"
        )
    return device


def available_devices() -> list[str]:
    """Device names this machine can run on: ``cpu`` and ``cuda:N`` for each GPU."""
    import torch

    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *gpus]


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None leaves torch's default).

    Raises:
        UserError: fewer than 1 or more than :data:`MAX_THREADS`.
    """
    if threads is None:
        return
    if not 1 <= int(threads) <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    import torch

    torch.set_num_threads(int(threads))
