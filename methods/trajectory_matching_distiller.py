"""Trajectory matching: MTT, TESLA and TESLA-exact as variants of one distiller.

The three methods differ only in their gradient engine (``unrolled``, ``tesla``,
``adjoint``; see :mod:`dcbench_tesla.matching`) and label strategy, so a memory or
accuracy comparison between them compares exactly one code difference.

One outer iteration: sample an expert and a start epoch ``t``; ``theta_0`` = its
snapshot ``t``, ``theta*`` = snapshot ``t + expert_epochs``; the engine computes the
gradient of ``||theta_T - theta*||^2 / ||theta_0 - theta*||^2`` with respect to the
images (and label logits, if learned) and the step size ``syn_lr``; SGD (momentum 0.5)
updates them. ``syn_lr`` is kept at least ``min_syn_lr``; a NaN or inf stops the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dcbench_tesla import Dataset, Distiller, SyntheticSet
from dcbench_tesla.checks import MAX_ITERATIONS
from dcbench_tesla.data import DATASETS
from dcbench_tesla.data.augment import DSA
from dcbench_tesla.errors import DivergenceError, UserError
from dcbench_tesla.evaluation import random_real_subset
from dcbench_tesla.matching import ENGINES, SNAPSHOT_POLICIES, MatchingProblem
from dcbench_tesla.models import MODELS, build_model
from dcbench_tesla.models.flat import FlatParams

_TEACHER_CHUNK = 500  # images per teacher forward: bounds SLA's activation memory at large IPC
# Image-steps per image of one inner step: the unrolled or first-order pass (1) plus the replay
# with its double backward (about 4 forward+backward's worth on a ConvNet); a rough constant.
_REPLAY_COST = 5.0
LabelStrategy = Literal["hard", "sla", "sla-last", "learned"]


@dataclass
class TrajectoryMatchingConfig:
    """Options of the trajectory-matching distiller (reference-facts sections 1, 2, 9).

    Attributes:
        iterations: Outer iterations.
        syn_steps: T, student SGD steps per iteration.
        expert_epochs: Epochs between ``theta_0`` and ``theta*``.
        max_start_epoch: Start epochs are drawn uniformly from ``[0, max_start_epoch)``.
        batch_syn: Synthetic images per inner step (None: all of them every step).
        lr_img: Learning rate of the images.
        lr_lr: Learning rate of ``syn_lr``.
        lr_label: Learning rate of learned label logits (labels="learned").
        lr_teacher: Initial ``syn_lr`` (the experts' learning rate).
        min_syn_lr: ``syn_lr`` is clamped to at least this (upstream lets it go negative).
        momentum: SGD momentum of the image, lr and label optimisers.
        engine: Gradient engine registry name.
        labels: "hard" (class indices), "sla" (teacher at the target step, TESLA),
            "sla-last" (teacher at the expert's last epoch, ablation), "learned" (logits
            initialised at 10 on the class, ablation).
        pix_init: Initial images: "real" (random real images per class) or "noise".
        model: Student model (None: the dataset's default).
        dsa_strategy: DSA families applied at each inner step ("none" to disable).
        num_experts: Expert trajectories to use (trained and cached if missing).
        expert_train_epochs: Epochs per expert when they must be trained (at lr ``lr_teacher``).
        expert_batch_size: Batch size of expert training.
        experts_dir: Use the expert store in this directory instead of the cache.
        snapshot_policy: Where the exact engine (``adjoint``, tesla-exact) keeps its parameter
            snapshots: "device" (all ``T + 1`` on the device), "host" (in pinned CPU memory,
            copied back one step ahead) or "checkpoint" (about ``2 sqrt(T)`` on the device, the
            others recomputed). Same gradient; other engines ignore it.
    """

    iterations: int = 5000
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 20
    batch_syn: int | None = None
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_label: float = 10.0
    lr_teacher: float = 0.01
    min_syn_lr: float = 1e-6
    momentum: float = 0.5
    engine: str = "unrolled"
    labels: LabelStrategy = "hard"
    pix_init: Literal["real", "noise"] = "real"
    model: str | None = None
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    num_experts: int = 100
    expert_train_epochs: int = 50
    expert_batch_size: int = 256
    experts_dir: str | None = None
    snapshot_policy: Literal["device", "host", "checkpoint"] = "device"

    def __post_init__(self) -> None:
        rates = (self.lr_img, self.lr_lr, self.lr_label, self.lr_teacher, self.min_syn_lr, self.momentum)
        if not all(math.isfinite(rate) for rate in rates):
            raise ValueError("learning rates and momentum must be finite numbers")
        checks = {
            "iterations": 0 <= self.iterations <= MAX_ITERATIONS,
            "syn_steps": self.syn_steps >= 1,
            "expert_epochs": self.expert_epochs >= 1,
            "max_start_epoch": self.max_start_epoch >= 1,
            "batch_syn": self.batch_syn is None or self.batch_syn >= 1,
            "lr_teacher": self.lr_teacher > 0,
            "min_syn_lr": self.min_syn_lr > 0,
            "num_experts": self.num_experts >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid value for {', '.join(bad)} (counts and learning rates must be positive, "
                f"iterations at most {MAX_ITERATIONS})"
            )
        ENGINES.get(self.engine)  # an unknown engine is a UserError with suggestions
        DSA(self.dsa_strategy)  # an unknown family is a ValueError naming the families
        if self.model is not None:
            MODELS.get(self.model)  # an unknown model is a UserError with suggestions
        if self.snapshot_policy not in SNAPSHOT_POLICIES:
            raise ValueError(
                f"invalid snapshot_policy {self.snapshot_policy!r}; choose from {', '.join(SNAPSHOT_POLICIES)}"
            )


class SyntheticBatches:
    """Upstream's batch sampling: a permutation split into chunks, reshuffled when used up."""

    def __init__(self, num_images: int, batch_size: int | None, generator: torch.Generator) -> None:
        self.num_images = num_images
        self.batch_size = batch_size or num_images
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def next(self) -> Tensor:
        """Indices of the next batch."""
        if self.batch_size >= self.num_images:
            return torch.arange(self.num_images)
        if self.position + self.batch_size > self.order.numel():
            self.order = torch.randperm(self.num_images, generator=self.generator)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Sampler position (for exact resume)."""
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sampler position."""
        self.order, self.position = state["order"].clone(), int(state["position"])


class TrajectoryMatching(Distiller):
    """MTT / TESLA / TESLA-exact: one distiller, a pluggable gradient engine."""

    Config = TrajectoryMatchingConfig
    info_keys = ("loss", "syn_lr", "expert", "start_epoch")

    # -- episode set-up --------------------------------------------------------------
    def reset(self, dataset: Dataset, ipc: int, seed: int) -> dict[str, Any]:
        """Load (or train) experts, initialise images, labels, step size and optimisers."""
        self.begin(dataset, ipc, seed)
        opts: TrajectoryMatchingConfig = self.options
        device = self.context.device
        self.engine = ENGINES.get(opts.engine)
        self.generator = torch.Generator().manual_seed(seed)
        self.model_name = opts.model or DATASETS.get(dataset.name).default_model
        c, h, _ = dataset.image_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = build_model(self.model_name, channels=c, num_classes=dataset.num_classes, image_size=h)
        self.flat = FlatParams(student.to(device).train())
        self.experts = self._experts(dataset)

        images, hard = random_real_subset(dataset, ipc, seed)
        if opts.pix_init == "noise":
            images = torch.randn(images.shape, generator=self.generator)
        self.images = images.to(device).requires_grad_(True)
        self.hard_labels = hard.to(device)
        self.soft_labels: Tensor | None = None
        self.label_logits: Tensor | None = None
        params = [{"params": [self.images], "lr": opts.lr_img}]
        if opts.labels == "learned":
            self.label_logits = (F.one_hot(self.hard_labels, dataset.num_classes).float() * 10.0).requires_grad_(True)
        self.syn_lr = torch.tensor(opts.lr_teacher, device=device).requires_grad_(True)
        self.opt_images = torch.optim.SGD(params, momentum=opts.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=opts.lr_lr, momentum=opts.momentum)
        self.opt_labels = (
            torch.optim.SGD([self.label_logits], lr=opts.lr_label, momentum=opts.momentum)
            if self.label_logits is not None
            else None
        )
        self.batches = SyntheticBatches(self.images.shape[0], opts.batch_syn, self.generator)
        self.augmenter = DSA(opts.dsa_strategy)
        return {
            "num_images": int(self.images.shape[0]),
            "num_params": self.flat.numel,
            "experts": self.experts.num_experts,
        }

    def expert_config(self, dataset: Dataset) -> Any:
        """The experts these options train and read from the cache (see ``Distiller.expert_config``)."""
        from dcbench_tesla.experts import ExpertConfig

        opts: TrajectoryMatchingConfig = self.options
        if opts.experts_dir:
            return None
        return ExpertConfig(
            dataset=dataset.name,
            model=opts.model or DATASETS.get(dataset.name).default_model,
            num_experts=opts.num_experts,
            epochs=opts.expert_train_epochs,
            lr=opts.lr_teacher,
            batch_size=opts.expert_batch_size,
            zca=dataset.preprocessing.zca is not None,
        )

    def estimate_work(self, dataset: Dataset, ipc: int, *, cached: bool = True) -> dict[str, float]:
        """Experts: epochs x training images per missing expert; distillation: per image of each inner step.

        An inner step costs about ``_REPLAY_COST`` image-steps per image: the first pass, then the
        replay with its double backward.
        """
        opts: TrajectoryMatchingConfig = self.options
        missing = opts.num_experts
        config = self.expert_config(dataset)
        if config is None or self.context.experts is not None:
            missing = 0
        elif cached:
            from dcbench_tesla.experts import expert_directory
            from dcbench_tesla.experts.store import finished_indices

            done = finished_indices(expert_directory(self.context.cache_dir, config, dataset))
            missing = sum(1 for i in range(opts.num_experts) if i not in set(done))
        images = dataset.num_classes * ipc
        batch = min(opts.batch_syn or images, images)
        return {
            "experts": float(missing * opts.expert_train_epochs * dataset.train_images.shape[0]),
            "distillation": float(opts.iterations * opts.syn_steps * batch * _REPLAY_COST),
        }

    def _experts(self, dataset: Dataset) -> Any:
        """The injected expert source, an explicit store, or the cached (trained if missing) one."""
        opts: TrajectoryMatchingConfig = self.options
        if self.context.experts is not None:
            experts = self.context.experts
        else:
            from dcbench_tesla.experts import ExpertStore, ensure_experts

            if opts.experts_dir:
                experts = ExpertStore.open(opts.experts_dir)
            else:
                experts = ensure_experts(
                    dataset,
                    self.expert_config(dataset),
                    self.context.cache_dir,
                    self.context.device,
                    self.context.notice,
                    self.context.progress,
                )
            experts.check_compatible(dataset, self.flat.to_dict())
        needed = opts.max_start_epoch + opts.expert_epochs
        if experts.epochs < needed:
            raise UserError(
                f"experts have {experts.epochs} epochs but max_start_epoch + expert_epochs = {needed}; "
                "lower --set max_start_epoch=... or train longer experts"
            )
        if experts.num_experts < 1:
            raise UserError("the expert store holds no finished expert; train experts first")
        return experts

    # -- one outer iteration -----------------------------------------------------------
    def _segment(self, generator: torch.Generator | None = None) -> tuple[int, int, Tensor, Tensor, Tensor | None]:
        opts: TrajectoryMatchingConfig = self.options
        generator = self.generator if generator is None else generator
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=generator))
        start = int(torch.randint(opts.max_start_epoch, (1,), generator=generator))
        # Only the rows this step uses are read (the last epoch only for SLA on the last teacher).
        epochs = [start, start + opts.expert_epochs]
        if opts.labels == "sla-last":
            epochs.append(self.experts.epochs)
        rows = _expert_rows(self.experts, expert, epochs).to(device=self.context.device, dtype=torch.float32)
        theta_last = rows[2] if len(epochs) == 3 else None
        return expert, start, rows[0], rows[1], theta_last

    @torch.no_grad()
    def _teacher_labels(self, teacher: Tensor, images: Tensor | None = None) -> Tensor:
        """Soft Label Assignment: the teacher's softmax on un-augmented images (temperature 1).

        ``images``: the synthetic images by default.
        """
        images = self.images.detach() if images is None else images.to(self.context.device)
        chunks = [self.flat.forward(teacher, part) for part in images.split(_TEACHER_CHUNK)]
        return torch.softmax(torch.cat(chunks), dim=1)

    def _labels_for(self, theta_target: Tensor, theta_last: Tensor | None) -> tuple[Tensor, bool]:
        strategy = self.options.labels
        if strategy == "hard":
            return self.hard_labels, False
        if strategy == "learned":
            return self.label_logits, True
        self.soft_labels = self._teacher_labels(theta_target if strategy == "sla" else theta_last)
        return self.soft_labels, False

    def relabel(self, images: Tensor, labels: Tensor) -> Tensor:
        """Labels by this set's rule for other images: the same-rule random baseline's labels.

        With SLA (``labels="sla"`` / ``"sla-last"``) the teacher is drawn as an iteration draws it: an
        expert and a start epoch from a generator seeded with the episode's seed (the method's own
        stream is left alone), then the snapshot at the target step (``sla``) or the expert's last
        epoch (``sla-last``); its softmax at temperature 1 on the un-augmented images is the label.
        Hard and learned labels give hard labels (learned logits belong to the synthetic images only).
        """
        if self.options.labels not in ("sla", "sla-last"):
            return labels
        _, _, _, theta_target, theta_last = self._segment(torch.Generator().manual_seed(self.seed))
        teacher = theta_target if self.options.labels == "sla" else theta_last
        return self._teacher_labels(teacher, images).cpu()

    def step(self) -> dict[str, Any]:
        """Sample a segment, compute the matching gradient with the engine, update."""
        opts: TrajectoryMatchingConfig = self.options
        expert, start, theta_start, theta_target, theta_last = self._segment()
        labels, learnable = self._labels_for(theta_target, theta_last)
        base_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        augmenter = self.augmenter

        def augment(x: Tensor, step: int) -> Tensor:
            return augmenter(x, seed=base_seed + step)

        problem = MatchingProblem(
            forward=self.flat.forward,
            theta_start=theta_start,
            theta_target=theta_target,
            images=self.images.detach(),
            labels=labels.detach(),
            batches=[self.batches.next() for _ in range(opts.syn_steps)],
            syn_lr=self.syn_lr.detach(),
            augment=augment,
            labels_learnable=learnable,
            snapshot_policy=opts.snapshot_policy,
        )
        with self.context.probe.phase("engine"):
            grads = self.engine(problem)
        self.context.probe.record("snapshot_bytes", grads.snapshot_bytes)
        self._guard(grads.is_finite(), "the matching loss or its gradient")
        self.images.grad = grads.images.to(self.images.dtype)
        self.syn_lr.grad = grads.syn_lr.to(self.syn_lr.dtype).reshape(self.syn_lr.shape)
        self.opt_images.step()
        self.opt_lr.step()
        if self.opt_labels is not None and grads.labels is not None:
            self.label_logits.grad = grads.labels.to(self.label_logits.dtype)
            self.opt_labels.step()
        with torch.no_grad():
            self._guard(bool(torch.isfinite(self.syn_lr)), "the learned step size syn_lr")
            self.syn_lr.clamp_(min=opts.min_syn_lr)
        self.iteration += 1
        return {
            "loss": float(grads.loss),
            "syn_lr": float(self.syn_lr.detach()),
            "expert": expert,
            "start_epoch": start,
            "grad_norm_images": float(grads.images.norm()),
        }

    def oom_advice(self) -> list[str]:
        """What fits a trajectory-matching iteration into less GPU memory."""
        opts: TrajectoryMatchingConfig = self.options
        advice = []
        if not getattr(self.engine, "constant_memory", True):
            advice.append(f"use a constant-memory engine (--set engine=tesla or adjoint; now {opts.engine})")
            advice.append(f"lower syn_steps (now {opts.syn_steps}) with --set syn_steps=N")
        advice.append(f"lower batch_syn (now {opts.batch_syn}) with --set batch_syn=N")
        return advice

    def _guard(self, finite: bool, what: str) -> None:
        if not finite:
            raise DivergenceError(
                f"{what} became NaN or inf at iteration {self.iteration + 1}; the synthetic set of iteration "
                f"{self.iteration} is kept. Likely cause: lr_img ({self.options.lr_img}) or lr_lr "
                f"({self.options.lr_lr}) too large for this dataset; lower them with --set."
            )

    # -- outputs and state -------------------------------------------------------------
    def synthetic_set(self) -> SyntheticSet:
        """Images, the labels of the latest iteration, and the learned step size."""
        if self.options.labels == "learned":
            labels = torch.softmax(self.label_logits.detach(), dim=1)
        elif self.soft_labels is not None:
            labels = self.soft_labels
        else:
            labels = self.hard_labels
        return self.package(self.images, labels, lr=float(self.syn_lr.detach()))

    def state_dict(self) -> dict[str, Any]:
        """Images, labels, step size, optimisers, RNG and sampler state, iteration."""
        return {
            "iteration": self.iteration,
            "images": self.images.detach().clone(),
            "syn_lr": self.syn_lr.detach().clone(),
            "soft_labels": None if self.soft_labels is None else self.soft_labels.clone(),
            "label_logits": None if self.label_logits is None else self.label_logits.detach().clone(),
            "opt_images": self.opt_images.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "opt_labels": None if self.opt_labels is None else self.opt_labels.state_dict(),
            "generator": self.generator.get_state(),
            "batches": self.batches.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after ``reset`` with the same dataset, ipc and seed)."""
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.syn_lr.copy_(state["syn_lr"])
            if self.label_logits is not None and state["label_logits"] is not None:
                self.label_logits.copy_(state["label_logits"])
        self.soft_labels = None if state["soft_labels"] is None else state["soft_labels"].to(self.images.device)
        self.opt_images.load_state_dict(state["opt_images"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        if self.opt_labels is not None and state["opt_labels"] is not None:
            self.opt_labels.load_state_dict(state["opt_labels"])
        self.generator.set_state(state["generator"])
        self.batches.load_state_dict(state["batches"])
        self.iteration = int(state["iteration"])


def _expert_rows(source: Any, expert: int, epochs: list[int]) -> Tensor:
    """Rows ``epochs`` of expert ``expert``: ``source.rows`` where it has it, else its whole trajectory."""
    rows = getattr(source, "rows", None)
    if callable(rows):
        return rows(expert, epochs)
    return source.trajectory(expert)[epochs]
