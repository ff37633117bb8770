"""Evaluation protocols (registered settings) and the one rule for the lr a set is evaluated with.

No torch here: ``dcbench ls protocols`` and request validation read this module alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import Registry


@dataclass(frozen=True)
class EvaluationProtocol:
    """Settings of the evaluation protocol.

    Attributes:
        name: Registry name.
        num_models: K, fresh models per architecture.
        epochs: Training epochs per model (the papers use 1000).
        batch_size: Training batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        fixed_lr: Learning rate when the set carries no learned lr.
        decay_at: Fraction of training after which the lr is multiplied by 0.1.
        dsa_strategy: DSA families applied to training batches ("none" for no augmentation).
        test_batch_size: Batch size at test time.
        description: One line for ``dcbench ls``.
    """

    name: str = "paper"
    num_models: int = 5
    epochs: int = 1000
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    fixed_lr: float = 0.01
    decay_at: float = 0.5
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    test_batch_size: int = 1024
    description: str = ""

    def replace(self, **changes: Any) -> EvaluationProtocol:
        """A copy with ``changes`` (None values ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PROTOCOLS: Registry[EvaluationProtocol] = Registry("evaluation protocol")
PROTOCOLS.register(
    "paper",
    EvaluationProtocol(
        name="paper",
        description="MTT/TESLA papers: K=5 models, 1000 epochs, SGD 0.9/5e-4, batch 256, DSA, lr decay at half",
    ),
)
PROTOCOLS.register(
    "short",
    EvaluationProtocol(
        name="short",
        epochs=300,
        description="as 'paper' with 300 epochs: a CPU budget (the default of small embedded datasets)",
    ),
)


def protocol_for(
    dataset_name: str, name: str | None = None, num_models: int | None = None, epochs: int | None = None
) -> EvaluationProtocol:
    """The named protocol (default: the dataset's ``default_protocol``) with flag overrides.

    Raises:
        UserError: an unknown protocol or dataset, or fewer than one model or epoch.
    """
    from dcbench_tesla.data import dataset_spec

    if num_models is not None and num_models < 1:
        raise UserError("--num-eval must be at least 1")
    if epochs is not None and epochs < 1:
        raise UserError("--eval-epochs must be at least 1")
    protocol = PROTOCOLS.get(name or dataset_spec(dataset_name).default_protocol)
    return protocol.replace(num_models=num_models, epochs=epochs)


def evaluation_lr(
    learned_lr: float | None, method_eval_lr: str | float, override: float | None, protocol: EvaluationProtocol
) -> float:
    """The learning rate a set is evaluated with: the one rule for ``run``, ``bench`` and ``eval``.

    In order: an explicit ``--eval-lr``; the set's learned step size when its method evaluates with
    it (``eval_lr == "learned"``); the method's fixed lr (a number); the protocol's ``fixed_lr``.

    Raises:
        UserError: an override that is not positive and finite.
    """
    if override is not None:
        if not (override > 0 and math.isfinite(override)):
            raise UserError(f"--eval-lr must be positive and finite, got {override}")
        return float(override)
    if method_eval_lr == "learned" and learned_lr is not None:
        return float(learned_lr)
    if isinstance(method_eval_lr, int | float) and not isinstance(method_eval_lr, bool):
        return float(method_eval_lr)
    return protocol.fixed_lr
