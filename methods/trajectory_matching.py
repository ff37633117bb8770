"""MTT, TESLA and TESLA-exact: their specs and config cards (the distiller: ``trajectory_matching_distiller``).

The three methods are one distiller (:class:`~dcbench_tesla_methods.trajectory_matching_distiller.TrajectoryMatching`)
with another gradient engine and label rule, so a memory or accuracy comparison between them compares
exactly one code difference. This module imports no torch: ``dcbench ls`` reads it.
"""

from __future__ import annotations

from dcbench_tesla.method import ConfigCard, MethodSpec

# -- config cards ------------------------------------------------------------------------
_PAPER = "TESLA paper, appendix A.12 (steps / expert epochs / max start / batch_syn / ZCA)"
_PAPER_TABLE = {
    # (dataset, ipc): (syn_steps, expert_epochs, max_start_epoch, batch_syn, zca)
    ("cifar10", 1): (50, 2, 3, None, True),
    ("cifar10", 10): (30, 2, 20, None, True),
    ("cifar10", 50): (30, 3, 40, None, False),
    ("cifar100", 1): (20, 3, 20, None, True),
    ("cifar100", 10): (15, 3, 30, None, False),
    ("cifar100", 50): (50, 2, 40, 100, True),
    ("imagenet64", 1): (10, 3, 6, 100, False),
    ("imagenet64", 2): (15, 3, 10, 100, False),
    ("imagenet64", 10): (20, 3, 10, 500, False),
    ("imagenet64", 50): (100, 3, 25, 500, False),
}
# lr_img / lr_lr from the TESLA repository README commands (1000 on CIFAR, 10000 on ImageNet).
_LR = {"cifar10": (1000.0, 1e-5), "cifar100": (1000.0, 1e-5), "imagenet64": (10000.0, 1e-4)}


def _paper_cards(sla_datasets: tuple[str, ...]) -> tuple[ConfigCard, ...]:
    cards = []
    for (dataset, ipc), (steps, expert_epochs, max_start, batch, zca) in _PAPER_TABLE.items():
        lr_img, lr_lr = _LR[dataset]
        options = {
            "syn_steps": steps,
            "expert_epochs": expert_epochs,
            "max_start_epoch": max_start,
            "batch_syn": batch,
            "lr_img": lr_img,
            "lr_lr": lr_lr,
            "lr_teacher": 0.01,
            "num_experts": 50 if dataset == "imagenet64" else 100,
            "expert_train_epochs": 50,
        }
        if dataset in sla_datasets:
            options["labels"] = "sla"
        cards.append(ConfigCard(dataset, ipc, options, zca=zca, source=_PAPER))
    return tuple(cards)


def _digits_cards() -> tuple[ConfigCard, ...]:
    # digits has 1,295 training images: an epoch at batch 256 is 6 SGD steps, too few for the
    # teacher at epoch 2-12 to give informative soft labels, so experts train at batch 32. Experts
    # train 6 epochs, what the cards reach (max_start_epoch + expert_epochs); the tunes ran with 8
    # and the first 6 snapshots of an expert do not depend on how many epochs follow (constant lr).
    common = {
        "num_experts": 3,
        "expert_train_epochs": 6,
        "expert_batch_size": 32,
        "lr_teacher": 0.01,
        "iterations": 100,
    }
    study = (
        "dcbench tune --method tesla on the digits validation split (seed 0; 100 iterations; each trial scored "
        "by 2 ConvNets x 300 epochs; TPE, median pruning) over lr_img 10..1000 (log), lr_lr 1e-6..1e-4 (log), "
        "syn_steps 5..15, max_start_epoch 2..6, expert_epochs 1..2"
    )
    return (
        ConfigCard(
            "digits",
            1,
            {**common, "syn_steps": 11, "expert_epochs": 1, "max_start_epoch": 3, "lr_img": 298.6, "lr_lr": 1.589e-5},
            zca=False,
            source=f"{study}: best of 20 trials (trial 18, 94.41 % validation)",
        ),
        ConfigCard(
            "digits",
            10,
            {**common, "syn_steps": 15, "expert_epochs": 1, "max_start_epoch": 5, "lr_img": 11.31, "lr_lr": 7.71e-5},
            zca=False,
            source=f"{study}: best of 6 trials (trial 2, 97.90 % validation; lr_img at the low end of its range)",
        ),
    )


def _cards(sla_datasets: tuple[str, ...]) -> tuple[ConfigCard, ...]:
    """Cards shared by the variants; ``sla_datasets`` switch on Soft Label Assignment."""
    return _paper_cards(sla_datasets) + _digits_cards()


_SMOKE = {
    "iterations": 2,
    "syn_steps": 2,
    "expert_epochs": 1,
    "max_start_epoch": 1,
    "num_experts": 1,
    "expert_train_epochs": 2,
    "lr_img": 10.0,
}


def _variant(
    method_id: str, engine: str, sla_datasets: tuple[str, ...], description: str, paper: str, accuracy: dict
) -> MethodSpec:
    """A trajectory-matching variant: the same distiller with another engine / label rule."""
    return MethodSpec(
        id=method_id,
        entry_point="dcbench_tesla_methods.trajectory_matching_distiller:TrajectoryMatching",
        kwargs={"engine": engine, "labels": "hard"},
        description=description,
        paper=paper,
        reference_accuracy=accuracy,
        config_cards=_cards(sla_datasets),
        eval_lr="learned",
        smoke_options=dict(_SMOKE),
    )


# The paper uses Soft Label Assignment for ImageNet-1K (appendix A.12); elsewhere hard labels.
# On digits SLA hurts: the teachers' softmax at temperature 1 is nearly uniform (see README).
_SLA_DATASETS = ("imagenet64",)
_TESLA = "Cui, Wang, Si, Hsieh. Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory. ICML 2023"
MTT_SPEC = _variant(
    "mtt",
    "unrolled",
    (),
    "MTT: unrolled trajectory matching, hard labels (memory linear in syn_steps)",
    "Cazenavette et al. Dataset Distillation by Matching Training Trajectories. CVPR 2022",
    {"cifar10": {1: 46.3, 10: 65.3, 50: 71.6}, "cifar100": {1: 24.3, 10: 40.6, 50: 47.7}},
)
TESLA_SPEC = _variant(
    "tesla",
    "tesla",
    _SLA_DATASETS,
    "TESLA: constant-memory first-order matching gradient; soft labels from the teacher (SLA) on ImageNet",
    _TESLA,
    {
        "cifar10": {1: 48.5, 10: 66.4, 50: 72.6},
        "cifar100": {1: 24.8, 10: 41.7, 50: 47.9},
        "imagenet64": {1: 7.7, 2: 10.5, 10: 17.8, 50: 27.9},
    },
)
TESLA_EXACT_SPEC = _variant(
    "tesla-exact",
    "adjoint",
    _SLA_DATASETS,
    "ours: TESLA's constant memory with MTT's exact gradient (adjoint sweep); labels as tesla",
    _TESLA + " (exact adjoint engine: dcbench-tesla)",
    {},
)
