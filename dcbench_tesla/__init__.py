"""dcbench-tesla: a Gymnasium-style benchmark harness for dataset distillation.

Public API for method authors and users::

    import dcbench_tesla as dc
    d = dc.make("tesla")
    info = d.reset(dataset=dc.load_dataset("digits"), ipc=1, seed=0)

The names below are imported on first use, so ``import dcbench_tesla`` (and ``dcbench --help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "Dataset": "dcbench_tesla.data.dataset",
    "load_dataset": "dcbench_tesla.data",
    "Distiller": "dcbench_tesla.distiller",
    "RunContext": "dcbench_tesla.distiller",
    "UserError": "dcbench_tesla.errors",
    "METHODS": "dcbench_tesla.method",
    "ConfigCard": "dcbench_tesla.method",
    "MethodSpec": "dcbench_tesla.method",
    "list_methods": "dcbench_tesla.method",
    "make": "dcbench_tesla.method",
    "register_method": "dcbench_tesla.method",
    "spec": "dcbench_tesla.method",
    "SyntheticSet": "dcbench_tesla.synthetic",
    "check_method": "dcbench_tesla.conformance",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
