"""dcbench-tesla: a Gymnasium-style benchmark harness for dataset distillation.

Public API for method authors and users::

    import dcbench_tesla as dc
    d = dc.make("tesla")
    info = d.reset(dataset=dc.load_dataset("digits"), ipc=1, seed=0)
"""

__version__ = "0.1.0"

from dcbench_tesla.data import Dataset, load_dataset  # noqa: E402
from dcbench_tesla.distiller import Distiller, RunContext  # noqa: E402
from dcbench_tesla.errors import UserError  # noqa: E402
from dcbench_tesla.method import (  # noqa: E402
    METHODS,
    ConfigCard,
    MethodSpec,
    list_methods,
    make,
    register_method,
    spec,
)
from dcbench_tesla.synthetic import SyntheticSet  # noqa: E402

__all__ = [
    "METHODS",
    "ConfigCard",
    "Dataset",
    "Distiller",
    "MethodSpec",
    "RunContext",
    "SyntheticSet",
    "UserError",
    "list_methods",
    "load_dataset",
    "make",
    "register_method",
    "spec",
]
