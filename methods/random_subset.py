"""The random baseline (IPC random real images per class): its spec (the distiller: ``random_subset_distiller``).

This module imports no torch: ``dcbench ls`` reads it.
"""

from __future__ import annotations

from dcbench_tesla.method import MethodSpec

SPEC = MethodSpec(
    id="random",
    entry_point="dcbench_tesla_methods.random_subset_distiller:RandomSubset",
    description="random real images per class (the baseline every result is reported beside)",
    paper="baseline of every dataset-distillation paper",
    reference_accuracy={
        "cifar10": {1: 15.4, 10: 31.0, 50: 50.6},
        "cifar100": {1: 5.3, 10: 18.6, 50: 34.7},
        "imagenet64": {1: 0.5, 2: 0.9, 10: 3.6, 50: 15.3},
    },
    eval_lr=0.01,
    role="baseline",
)
