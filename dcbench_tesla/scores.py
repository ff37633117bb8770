"""Label-robust scores beside every result: HLR, IOR and DDRS (DD-Ranking), and what they are measured on.

Test accuracy alone flatters soft-label methods: a random real subset trained on a teacher's soft
labels gains many points too. DD-Ranking (Li et al., "DD-Ranking: Rethinking the Evaluation of
Dataset Distillation", NUS, 2025) therefore reports, from accuracies as fractions:

- hard-label recovery ``HLR = acc_real_hard - acc_syn_hard``: how far the synthetic images, trained
  with hard labels (the argmax class of a soft label), stay below the whole real training set;
- improvement over random ``IOR = acc_syn - acc_rdm_same_rule``: how far the set, with its own labels,
  beats a random real subset of the same IPC given labels by the same rule (the same teacher);
- ``alpha = w * IOR - (1 - w) * HLR`` and the DD-Ranking score ``DDRS = (e^alpha - e^-1) / (e - e^-1)``
  (``w = 0.5`` by default; higher is better, 0..1 for accuracies in 0..1).

:func:`evaluate_with_scores` trains every set these need under one protocol and architecture,
reusing an evaluation whenever two of them are the same images, labels and lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcbench_tesla.data import Dataset
from dcbench_tesla.data.dataset import Split
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import (
    EvaluationResult,
    evaluate_images,
    random_real_subset,
    whole_pool_evaluation,
)
from dcbench_tesla.protocols import EvaluationProtocol

#: ``w`` of ``alpha = w IOR - (1 - w) HLR`` (DD-Ranking's default).
DEFAULT_DDRS_WEIGHT = 0.5


def hard_label_recovery(acc_real_hard: float, acc_syn_hard: float) -> float:
    """``HLR = acc_real_hard - acc_syn_hard`` (fractions; lower is better)."""
    return acc_real_hard - acc_syn_hard


def improvement_over_random(acc_syn: float, acc_rdm_same_rule: float) -> float:
    """``IOR = acc_syn - acc_rdm_same_rule`` (fractions; higher is better)."""
    return acc_syn - acc_rdm_same_rule


def ddrs(hlr: float, ior: float, weight: float = DEFAULT_DDRS_WEIGHT) -> float:
    """The DD-Ranking score ``(e^alpha - e^-1) / (e - e^-1)`` with ``alpha = w IOR - (1 - w) HLR``.

    Raises:
        UserError: a weight outside [0, 1].
    """
    check_weight(weight)
    alpha = weight * ior - (1.0 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def check_weight(weight: float) -> float:
    """``weight`` if it lies in [0, 1].

    Raises:
        UserError: otherwise.
    """
    if not (0.0 <= weight <= 1.0):
        raise UserError(f"--ddrs-weight must be between 0 and 1, got {weight}")
    return float(weight)


@dataclass
class Scores:
    """The accuracies (fractions) behind HLR, IOR and DDRS on one architecture, and those scores.

    A score whose inputs were not measured (``--no-real``, ``--no-baseline``) is None.
    """

    acc_syn: float
    acc_syn_hard: float
    acc_rdm_same_rule: float | None
    acc_real_hard: float | None
    ddrs_weight: float = DEFAULT_DDRS_WEIGHT

    @property
    def hlr(self) -> float | None:
        """Hard-label recovery, or None without ``acc_real_hard``."""
        return None if self.acc_real_hard is None else hard_label_recovery(self.acc_real_hard, self.acc_syn_hard)

    @property
    def ior(self) -> float | None:
        """Improvement over random, or None without ``acc_rdm_same_rule``."""
        return None if self.acc_rdm_same_rule is None else improvement_over_random(self.acc_syn, self.acc_rdm_same_rule)

    @property
    def ddrs(self) -> float | None:
        """The DD-Ranking score, or None when HLR or IOR is missing."""
        hlr, ior = self.hlr, self.ior
        return None if hlr is None or ior is None else ddrs(hlr, ior, self.ddrs_weight)

    def to_dict(self) -> dict[str, Any]:
        """The ``scores`` entry of one architecture in ``result.json``."""
        return {
            "acc_syn": self.acc_syn,
            "acc_syn_hard": self.acc_syn_hard,
            "acc_rdm_same_rule": self.acc_rdm_same_rule,
            "acc_real_hard": self.acc_real_hard,
            "hlr": self.hlr,
            "ior": self.ior,
            "ddrs": self.ddrs,
            "ddrs_weight": self.ddrs_weight,
        }


def format_scores(scores: Scores) -> str:
    """``"HLR 4.2 pts  IOR 21.0 pts  DDRS 0.571"`` (points = percentage points; "–" when not measured)."""

    def pts(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:+.1f} pts"

    score = "–" if scores.ddrs is None else f"{scores.ddrs:.3f}"
    return f"HLR {pts(scores.hlr)}  IOR {pts(scores.ior)}  DDRS {score} (w {scores.ddrs_weight:g})"


@dataclass
class FairEvaluation:
    """A set's evaluation and everything evaluated beside it under the same protocol.

    Attributes:
        evaluation: The set with its own labels (``acc_syn``).
        evaluation_hard: The same images with argmax labels (``acc_syn_hard``); None when the labels
            are already hard (then it equals ``evaluation``).
        baseline: The random real subset of the same IPC with hard labels (None when not asked).
        baseline_same_rule: The same subset with labels from the set's own rule (``acc_rdm_same_rule``).
        same_rule_kind: ``"soft"`` or ``"hard"``: the labels ``baseline_same_rule`` trained on.
        real_hard: The whole training pool, hard labels, the protocol's fixed lr (``acc_real_hard``).
        scores: Per architecture.
    """

    evaluation: EvaluationResult
    evaluation_hard: EvaluationResult | None = None
    baseline: EvaluationResult | None = None
    baseline_same_rule: EvaluationResult | None = None
    same_rule_kind: str | None = None
    real_hard: EvaluationResult | None = None
    scores: dict[str, Scores] = field(default_factory=dict)

    def records(self) -> dict[str, Any]:
        """The ``result.json`` entries: evaluations as dicts (None where not measured) and ``scores``."""

        def as_dict(result: EvaluationResult | None, **extra: Any) -> dict[str, Any] | None:
            return None if result is None else {**result.to_dict(), **extra}

        return {
            "evaluation": as_dict(self.evaluation),
            "evaluation_hard_labels": as_dict(self.evaluation_hard),
            "baseline": as_dict(self.baseline),
            "baseline_same_rule": as_dict(self.baseline_same_rule, label_rule=self.same_rule_kind),
            "real_hard": as_dict(self.real_hard),
            "scores": {name: s.to_dict() for name, s in self.scores.items()},
        }


def same_rule_labels(distiller: Any, dataset: Dataset, ipc: int, seed: int, method: str) -> Tensor:
    """Labels ``distiller``'s own rule gives ``random_real_subset(dataset, ipc, seed)`` (its ``relabel`` hook).

    Raises:
        UserError: the hook returned labels of the wrong shape.
    """
    images, hard = random_real_subset(dataset, ipc, seed)
    labels = distiller.relabel(images, hard)
    if labels.shape[0] != hard.shape[0] or labels.ndim not in (1, 2):
        raise UserError(
            f"method {method!r}: relabel() returned labels of shape {tuple(labels.shape)} for "
            f"{hard.shape[0]} images; expected ({hard.shape[0]},) classes or ({hard.shape[0]}, K) probabilities"
        )
    return labels.detach().cpu()


class _Memo:
    """Evaluates sets, reusing the result when the same images, labels and lr come again."""

    def __init__(self, common: dict[str, Any]) -> None:
        self.common = common
        self.done: list[tuple[Tensor, Tensor, float, EvaluationResult]] = []

    def __call__(self, images: Tensor, labels: Tensor, lr: float, label: str) -> EvaluationResult:
        for seen_images, seen_labels, seen_lr, result in self.done:
            same = seen_lr == lr and seen_images.shape == images.shape and seen_labels.shape == labels.shape
            if same and seen_labels.dtype == labels.dtype and torch.equal(seen_labels, labels):
                if torch.equal(seen_images, images):
                    return result
        result = evaluate_images(images, labels, lr=lr, label=label, **self.common)
        self.done.append((images, labels, lr, result))
        return result


def evaluate_with_scores(
    images: Tensor,
    labels: Tensor,
    lr: float,
    dataset: Dataset,
    models: list[str],
    protocol: EvaluationProtocol,
    seed: int,
    device: torch.device,
    *,
    ipc: int,
    same_rule_labels: Tensor | None,
    hard_baseline: bool,
    real: bool,
    split: Split = "test",
    cache_dir: Path | None = None,
    progress: bool = False,
    ddrs_weight: float = DEFAULT_DDRS_WEIGHT,
) -> FairEvaluation:
    """Evaluate a set and what its label-robust scores need, each under the same protocol.

    Args:
        images: The set's images (model inputs).
        labels: Its labels: (N,) classes or (N, K) probabilities.
        lr: The lr the set is evaluated with (also for the same-rule subset; the hard-labelled random
            subset uses the protocol's fixed lr, the papers' Random column).
        dataset: The data (its training pool and the scored split).
        models: Architectures.
        protocol: The evaluation protocol.
        seed: Seeds the random subset and the evaluation models.
        device: Where to train.
        ipc: Images per class of the random subset.
        same_rule_labels: Labels the set's own rule gives the random subset
            ``random_real_subset(dataset, ipc, seed)`` (a method's ``relabel``); None: no same-rule
            baseline (and no IOR).
        hard_baseline: Also evaluate the subset with hard labels (the ``baseline`` record).
        real: Evaluate the whole training pool with hard labels (cached; ``acc_real_hard`` and HLR).
        split: The scored split.
        cache_dir: Cache of the whole-pool evaluation [``$DCBENCH_CACHE``].
        progress: Show progress bars.
        ddrs_weight: ``w`` of DDRS.
    """
    check_weight(ddrs_weight)
    common = {"dataset": dataset, "models": models, "protocol": protocol, "seed": seed, "device": device}
    evaluate = _Memo({**common, "progress": progress, "split": split})
    fair = FairEvaluation(evaluation=evaluate(images, labels, lr, "evaluate"))
    hard = labels.argmax(dim=1) if labels.is_floating_point() else labels
    if labels.is_floating_point():
        fair.evaluation_hard = evaluate(images, hard, lr, "evaluate (hard labels)")
    if hard_baseline or same_rule_labels is not None:
        subset, subset_hard = random_real_subset(dataset, ipc, seed)
        if hard_baseline:
            fair.baseline = evaluate(subset, subset_hard, protocol.fixed_lr, "random real subset")
        if same_rule_labels is not None:
            fair.same_rule_kind = "soft" if same_rule_labels.is_floating_point() else "hard"
            fair.baseline_same_rule = evaluate(subset, same_rule_labels.cpu(), lr, "baseline (same label rule)")
    if real:
        fair.real_hard = whole_pool_evaluation(
            dataset, models, protocol, seed, device, split=split, cache_dir=cache_dir, progress=progress
        )
    for name in models:
        syn = fair.evaluation.by_model[name].mean
        fair.scores[name] = Scores(
            acc_syn=syn,
            acc_syn_hard=fair.evaluation_hard.by_model[name].mean if fair.evaluation_hard else syn,
            acc_rdm_same_rule=fair.baseline_same_rule.by_model[name].mean if fair.baseline_same_rule else None,
            acc_real_hard=fair.real_hard.by_model[name].mean if fair.real_hard else None,
            ddrs_weight=ddrs_weight,
        )
    return fair
