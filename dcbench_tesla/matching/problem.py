"""The trajectory-matching problem every gradient engine solves, and its answer.

A gradient engine receives a :class:`MatchingProblem` (a functional student, the start and target
parameters of an expert segment, the synthetic set, the per-step batches, the augmentation and the
student step size) and returns a :class:`MatchingGradients` (the matching loss and its gradients
with respect to the synthetic images, the learnable label logits and the step size).

The student runs ``T = len(batches)`` plain SGD steps from ``theta_start``::

    theta_{i+1} = theta_i - beta * grad_theta l_i(theta_i),
    l_i(theta)  = CE(forward(theta, augment(images[batches[i]], i)), targets[batches[i]]),

and the matching loss is ``L = ||theta_T - theta*||^2 / ||theta_0 - theta*||^2``, the denominator
being a constant (no gradient flows through it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from dcbench_tesla.matching import SNAPSHOT_POLICIES

__all__ = ["SNAPSHOT_POLICIES", "MatchingEngine", "MatchingGradients", "MatchingProblem", "identity_augment"]

#: Where an engine that keeps parameter snapshots (``adjoint``) keeps them:
#: ``device``: all ``T + 1`` on the problem's device; ``host``: in (pinned, on CUDA) CPU memory, copied
#: to the device one step ahead of use; ``checkpoint``: about ``2 sqrt(T)`` on the device, the others
#: recomputed (first-order) segment by segment in the reverse sweep. All give the same gradient.


def identity_augment(images: Tensor, step: int) -> Tensor:
    """The no-op augmentation: returns ``images`` unchanged for every step."""
    del step
    return images


@dataclass
class MatchingProblem:
    """One outer iteration of trajectory matching, as handed to a gradient engine.

    Attributes:
        forward: ``forward(theta, x) -> logits`` for a flat parameter vector ``theta`` of shape
            ``(P,)`` and a batch ``x``; must be differentiable in both (e.g.
            :meth:`dcbench_tesla.models.flat.FlatParams.forward`).
        theta_start: ``theta_0``, shape ``(P,)``: the expert's parameters at the start epoch.
        theta_target: ``theta*``, shape ``(P,)``: the expert's parameters ``expert_epochs`` later.
        images: The synthetic set, shape ``(N, C, H, W)``. Engines never need it to require grad.
        labels: Either ``(N,)`` int64 class indices, or ``(N, K)`` float: probability targets, or
            label logits when ``labels_learnable`` is set.
        labels_learnable: If True, ``labels`` are logits, the per-sample target is
            ``softmax(labels)`` and the engine returns the gradient with respect to these logits.
        batches: One index tensor into the ``N`` images per inner step; ``T = len(batches)``.
        augment: ``augment(x, step) -> x'``: differentiable, and deterministic given the step index
            (engines that replay a step call it again with the same index and expect the same
            transform). :func:`identity_augment` turns augmentation off.
        syn_lr: The student step size ``beta``, a scalar tensor.
        snapshot_policy: Where engines that keep parameter snapshots keep them (one of
            :data:`SNAPSHOT_POLICIES`); engines without snapshots ignore it.
    """

    forward: Callable[[Tensor, Tensor], Tensor]
    theta_start: Tensor
    theta_target: Tensor
    images: Tensor
    labels: Tensor
    batches: Sequence[Tensor]
    syn_lr: Tensor
    augment: Callable[[Tensor, int], Tensor] = identity_augment
    labels_learnable: bool = False
    snapshot_policy: str = "device"

    def __post_init__(self) -> None:
        if self.snapshot_policy not in SNAPSHOT_POLICIES:
            raise ValueError(
                f"unknown snapshot policy {self.snapshot_policy!r}; choose from {', '.join(SNAPSHOT_POLICIES)}"
            )
        if self.theta_start.dim() != 1 or self.theta_start.shape != self.theta_target.shape:
            raise ValueError(
                "theta_start and theta_target must be flat vectors of the same length, got "
                f"{tuple(self.theta_start.shape)} and {tuple(self.theta_target.shape)}"
            )
        if len(self.batches) == 0:
            raise ValueError("a matching problem needs at least one inner step (batches is empty)")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.labels.dim() == 1:
            if self.labels.is_floating_point():
                raise ValueError("1-D labels must be int64 class indices")
            if self.labels_learnable:
                raise ValueError("labels_learnable needs (N, K) float label logits, not class indices")
        elif self.labels.dim() != 2 or not self.labels.is_floating_point():
            raise ValueError(f"labels must be (N,) int64 or (N, K) float, got {tuple(self.labels.shape)}")
        if self.syn_lr.numel() != 1:
            raise ValueError(f"syn_lr must be a scalar tensor, got shape {tuple(self.syn_lr.shape)}")

    @property
    def num_steps(self) -> int:
        """``T``, the number of inner SGD steps."""
        return len(self.batches)

    def start_distance(self) -> Tensor:
        """``||theta_0 - theta*||^2``, the loss's constant denominator (detached)."""
        return (self.theta_start.detach() - self.theta_target.detach()).pow(2).sum()

    def matching_loss(self, theta_end: Tensor) -> Tensor:
        """``L = ||theta_end - theta*||^2 / ||theta_0 - theta*||^2`` (differentiable in ``theta_end``)."""
        return (theta_end - self.theta_target.detach()).pow(2).sum() / self.start_distance()

    def loss_grad_wrt_end(self, theta_end: Tensor) -> Tensor:
        """``dL/dtheta_T = 2 (theta_T - theta*) / ||theta_0 - theta*||^2`` (detached)."""
        theta_end = theta_end.detach()
        return 2.0 * (theta_end - self.theta_target.detach()) / self.start_distance()

    def step_inputs(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Indices, images and labels of inner step ``step``, detached (before augmentation).

        Returns:
            ``(index, images_batch, labels_batch)``: ``index`` is int64 on the images' device.
        """
        index = torch.as_tensor(self.batches[step]).to(device=self.images.device, dtype=torch.long)
        return index, self.images.detach()[index], self.labels.detach()[index]

    def step_loss(self, theta: Tensor, images_batch: Tensor, labels_batch: Tensor, step: int) -> Tensor:
        """Inner loss ``l_step``: mean cross-entropy of the augmented batch under parameters ``theta``.

        Args:
            theta: Flat parameters ``(P,)``.
            images_batch: The (un-augmented) images of this step; augmentation is applied here with
                the step index, so every pass over a step sees the same transform.
            labels_batch: The labels of this step, in the problem's label format.
            step: Step index ``i`` (passed to ``augment``).
        """
        logits = self.forward(theta, self.augment(images_batch, step))
        if labels_batch.dim() == 1:
            return F.cross_entropy(logits, labels_batch)
        if self.labels_learnable:
            return F.cross_entropy(logits, torch.softmax(labels_batch, dim=1))
        return F.cross_entropy(logits, labels_batch)


@dataclass
class MatchingGradients:
    """What a gradient engine returns (all tensors detached).

    Attributes:
        loss: Scalar ``L = ||theta_T - theta*||^2 / ||theta_0 - theta*||^2``.
        images: ``dL/dimages``, same shape and dtype as the problem's images.
        labels: ``dL/dlabel_logits`` (same shape as the labels) when ``labels_learnable``, else None.
        syn_lr: ``dL/dbeta``, scalar with the dtype of the problem's ``syn_lr``.
        theta_end: ``theta_T``, shape ``(P,)``.
        snapshot_bytes: Peak bytes of parameter snapshots the engine kept in the problem's device
            memory outside autograd's saved tensors (``(T + 1) * P * itemsize`` for the adjoint
            engine with the ``device`` policy); 0 if none.
        host_snapshot_bytes: Bytes of parameter snapshots kept in host memory (the ``host``
            policy; on a CPU problem this is the same physical memory, counted here); 0 if none.
        snapshot_policy: The policy the snapshots followed ("" for engines that keep none).
        recomputed_steps: Inner steps run a second time, first-order, to rebuild snapshots
            (the ``checkpoint`` policy); 0 otherwise.
    """

    loss: Tensor
    images: Tensor
    labels: Tensor | None
    syn_lr: Tensor
    theta_end: Tensor
    snapshot_bytes: int = 0
    host_snapshot_bytes: int = 0
    snapshot_policy: str = ""
    recomputed_steps: int = 0

    def is_finite(self) -> bool:
        """True if the loss and every gradient are finite."""
        parts = [self.loss, self.images, self.syn_lr] + ([self.labels] if self.labels is not None else [])
        return all(bool(torch.isfinite(p).all()) for p in parts) and math.isfinite(float(self.loss))


@runtime_checkable
class MatchingEngine(Protocol):
    """The plug-in point for trajectory-matching gradients: ``engine(problem) -> MatchingGradients``.

    An engine is any callable taking a :class:`MatchingProblem` and returning
    :class:`MatchingGradients` for it, registered in ``dcbench_tesla.matching.ENGINES``. It must:

    - run ``T = problem.num_steps`` SGD steps from ``problem.theta_start`` with step size
      ``problem.syn_lr``, using ``problem.step_inputs(i)`` and ``problem.step_loss(...)`` (which
      applies ``problem.augment`` with the step index ``i``);
    - return the matching loss, ``theta_T``, and the gradients of the loss with respect to the
      images, the label logits (only when ``problem.labels_learnable``) and the step size, as
      detached tensors with the dtypes and devices of the corresponding problem tensors;
    - leave the problem's tensors unchanged and work whether or not they require grad, on CPU and
      CUDA, in float32 and float64.

    Two attributes describe it (the test-suite reads them, so a new engine is checked on arrival):

    Attributes:
        exact: True if the gradients are the exact derivative of ``L`` (they are then tested
            against the ``unrolled`` engine to round-off); False for approximations such as TESLA.
        constant_memory: True if autograd's saved tensors do not grow with ``T``.
    """

    exact: bool
    constant_memory: bool

    def __call__(self, problem: MatchingProblem) -> MatchingGradients:
        """Compute the matching loss and its gradients for ``problem``."""
        ...
