"""The built-in gradient engines: ``unrolled`` (MTT), ``tesla`` (TESLA Algorithm 1), ``adjoint`` (ours).

All three take a :class:`~dcbench_tesla.matching.problem.MatchingProblem` and return
:class:`~dcbench_tesla.matching.problem.MatchingGradients`; they differ only in how the gradient of
``L = ||theta_T - theta*||^2 / ||theta_0 - theta*||^2`` is propagated back through the ``T`` inner
SGD steps ``theta_{i+1} = theta_i - beta g_i`` (``g_i`` the gradient of step ``i``'s loss):

============  =========  ==================================================  =========================
engine        exact      autograd memory                                     extra memory
============  =========  ==================================================  =========================
``unrolled``  yes        ``T`` double-backward graphs (linear in ``T``)      none
``tesla``     ``T = 1``  one graph at a time (constant)                      ``O(P)``
``adjoint``   yes        one graph at a time (constant)                      snapshots: ``(T + 1) P``
                                                                             (``device``), ``O(P)`` on
                                                                             the device (``host``),
                                                                             ``~2 sqrt(T) P``
                                                                             (``checkpoint``)
============  =========  ==================================================  =========================

Every engine gives each step's images (and label logits) their own leaf tensor, so a gradient is
taken with respect to the batch only and accumulated into the ``(N, ...)`` buffer with
``index_add_`` (an image used in several steps, or twice in one batch, sums its contributions).

Graph reuse: ``tesla`` and ``adjoint`` run their forward loop first-order, except its last step,
which they take with ``create_graph`` and keep: that step is the first one their second pass
needs (``adjoint`` sweeps in reverse; ``tesla``'s replay does the shared step first, then steps
``0 .. T-2``), so one forward and backward per outer iteration is saved and autograd still holds
at most one graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dcbench_tesla.matching.problem import MatchingGradients, MatchingProblem
from dcbench_tesla.matching.snapshots import make_snapshot_store

__all__ = ["adjoint", "tesla", "unrolled"]

EngineFn = Callable[[MatchingProblem], MatchingGradients]


def _engine(*, exact: bool, constant_memory: bool) -> Callable[[EngineFn], EngineFn]:
    """Mark a function as a gradient engine, recording the attributes the test-suite reads."""

    def mark(fn: EngineFn) -> EngineFn:
        wrapped = torch.enable_grad()(fn)  # engines may be called from inside torch.no_grad()
        wrapped.exact = exact  # type: ignore[attr-defined]
        wrapped.constant_memory = constant_memory  # type: ignore[attr-defined]
        return wrapped

    return mark


class _Accumulator:
    """Per-image (and per-label) gradient buffers filled batch by batch with ``index_add_``."""

    def __init__(self, problem: MatchingProblem) -> None:
        self.images = torch.zeros_like(problem.images, memory_format=torch.contiguous_format)
        self.labels = torch.zeros_like(problem.labels) if problem.labels_learnable else None

    def add(self, index: Tensor, images_grad: Tensor, labels_grad: Tensor | None, scale: Tensor | None) -> None:
        """Add ``scale * grad`` (``scale`` None means 1) into the rows ``index`` of the buffers."""
        if scale is not None:
            images_grad = scale * images_grad
            labels_grad = None if labels_grad is None else scale * labels_grad
        self.images.index_add_(0, index, images_grad.to(self.images.dtype))
        if self.labels is not None and labels_grad is not None:
            self.labels.index_add_(0, index, labels_grad.to(self.labels.dtype))


def _leaves(problem: MatchingProblem, step: int) -> tuple[Tensor, Tensor, Tensor]:
    """This step's index, and its images and labels as fresh leaves (labels require grad if learnable)."""
    index, images, labels = problem.step_inputs(step)
    images = images.requires_grad_(True)
    if problem.labels_learnable:
        labels = labels.requires_grad_(True)
    return index, images, labels


def _first_order_step(problem: MatchingProblem, theta: Tensor, step: int) -> Tensor:
    """``g_i = grad_theta l_i(theta)`` with no graph kept (images and labels treated as constants)."""
    _, images, labels = problem.step_inputs(step)
    theta = theta.detach().requires_grad_(True)
    loss = problem.step_loss(theta, images, labels, step)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


class _Step:
    """Inner step ``i`` taken with ``create_graph``: its leaves and ``g_i`` (graph attached)."""

    def __init__(self, problem: MatchingProblem, theta: Tensor, step: int) -> None:
        self.index, self.images, self.labels = _leaves(problem, step)
        self.theta = theta.detach().requires_grad_(True)
        loss = problem.step_loss(self.theta, self.images, self.labels, step)
        (self.grad,) = torch.autograd.grad(loss, self.theta, create_graph=True)
        self.labels_learnable = problem.labels_learnable

    def data_inputs(self) -> list[Tensor]:
        """The step's images (and label logits, when learnable): what the image gradient is taken for."""
        return [self.images, self.labels] if self.labels_learnable else [self.images]


def _grads(output: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """``torch.autograd.grad`` with zeros for inputs the output does not depend on."""
    return list(torch.autograd.grad(output, inputs, allow_unused=True, materialize_grads=True))


@_engine(exact=True, constant_memory=False)
def unrolled(problem: MatchingProblem) -> MatchingGradients:
    """MTT's engine: unroll all ``T`` steps with graphs, then one backward pass. Exact.

    Every inner gradient is taken with ``create_graph=True`` so the final ``torch.autograd.grad``
    differentiates through all of them (including every Hessian term). Autograd keeps ``T``
    double-backward graphs alive, so memory grows linearly with ``T`` (and the batch size).

    Args:
        problem: The matching problem.

    Returns:
        The exact loss and gradients.
    """
    beta = problem.syn_lr.detach().clone().requires_grad_(True)
    theta = problem.theta_start.detach().clone().requires_grad_(True)
    steps: list[tuple[Tensor, Tensor, Tensor]] = []
    for i in range(problem.num_steps):
        index, images, labels = _leaves(problem, i)
        loss = problem.step_loss(theta, images, labels, i)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - beta * g
        steps.append((index, images, labels))
    matching = problem.matching_loss(theta)

    inputs = [beta] + [x for _, x, _ in steps]
    if problem.labels_learnable:
        inputs += [y for _, _, y in steps]
    grads = _grads(matching, inputs)
    acc = _Accumulator(problem)
    image_grads = grads[1 : 1 + len(steps)]
    label_grads = grads[1 + len(steps) :] if problem.labels_learnable else [None] * len(steps)
    for (index, _, _), gx, gy in zip(steps, image_grads, label_grads, strict=True):
        acc.add(index, gx, gy, None)
    return MatchingGradients(
        loss=matching.detach(),
        images=acc.images,
        labels=acc.labels,
        syn_lr=grads[0].detach().to(problem.syn_lr.dtype),
        theta_end=theta.detach(),
    )


@_engine(exact=False, constant_memory=True)
def tesla(problem: MatchingProblem) -> MatchingGradients:
    """TESLA's engine (Algorithm 1 of Cui et al., ICML 2023): constant memory, first-order.

    Loop 1 runs the ``T`` steps without graphs and sums the inner gradients,
    ``G = sum_i g_i``, so ``theta_T = theta_0 - beta G``. Treating ``L`` as a function of ``G``
    alone, ``v = dL/dG = -beta lambda_T`` with ``lambda_T = 2 (theta_T - theta*) / ||theta_0 - theta*||^2``.
    Loop 2 replays the steps, one graph at a time: ``g_i`` is recomputed at ``theta_i`` on the
    same augmented batch (``augment`` is called with the same step index) with
    ``create_graph=True``, and one backward of ``v . g_i`` gives step ``i``'s contribution to the
    image (and label-logit) gradient. The parameters are advanced with the recomputed ``g_i``, so no
    snapshots are kept. The step-size gradient is ``dL/dbeta = -G . lambda_T`` with ``G`` constant.

    Loop 1 takes its last step with ``create_graph`` and keeps that graph; loop 2 uses it first,
    then replays steps ``0 .. T-2`` from ``theta_0`` (the contributions are summed, so the order
    only changes round-off). One forward and backward fewer than replaying all ``T`` steps, and
    never more than one graph alive.

    This drops every term that flows through the dependence of ``theta_i`` on earlier batches and on
    ``beta`` (the inner Hessians): it equals the exact gradient only at ``T = 1``.

    Upstream quirk, not reproduced: the reference TESLA code doubles a Python tuple where it means to
    double the gradient tensor, so its image gradient is half of ``dL/dX`` (as if ``lr_img`` were
    halved). This engine returns the true derivative of ``L`` under the TESLA approximation; a
    config that reproduces upstream numbers should halve ``lr_img`` instead.

    Args:
        problem: The matching problem.

    Returns:
        The exact loss and ``theta_T``, and TESLA's first-order gradients.
    """
    beta = problem.syn_lr.detach()
    theta_start = problem.theta_start.detach()
    last = problem.num_steps - 1
    theta = theta_start
    total = torch.zeros_like(theta_start)
    for i in range(last):  # loop 1: no graphs
        g = _first_order_step(problem, theta, i)
        theta = theta - beta * g
        total += g
    step: _Step | None = _Step(problem, theta, last)  # loop 1's last step, graph kept for loop 2
    g = step.grad.detach()
    theta_end = theta - beta * g
    total += g
    lam_end = problem.loss_grad_wrt_end(theta_end)
    v = -beta * lam_end

    acc = _Accumulator(problem)
    theta = theta_start
    for i in [last, *range(last)]:  # loop 2: the shared step, then 0 .. T-2 from theta_0
        if step is None:
            step = _Step(problem, theta, i)
            theta = theta - beta * step.grad.detach()
        grads = _grads(torch.dot(v, step.grad), step.data_inputs())
        acc.add(step.index, grads[0], grads[1] if problem.labels_learnable else None, None)
        step = None
        del grads

    return MatchingGradients(
        loss=problem.matching_loss(theta_end).detach(),
        images=acc.images,
        labels=acc.labels,
        syn_lr=(-torch.dot(total, lam_end)).to(problem.syn_lr.dtype),
        theta_end=theta_end,
    )


@_engine(exact=True, constant_memory=True)
def adjoint(problem: MatchingProblem) -> MatchingGradients:
    """Our exact constant-memory engine: a reverse (adjoint) sweep with Hessian-vector products.

    Loop 1 runs the ``T`` steps without graphs and keeps ``theta_0 .. theta_{T-1}`` (where: see
    ``problem.snapshot_policy`` and :mod:`dcbench_tesla.matching.snapshots`). With
    ``lambda_T = dL/dtheta_T = 2 (theta_T - theta*) / ||theta_0 - theta*||^2``, the reverse sweep
    ``i = T-1 .. 0`` recomputes ``g_i`` at ``theta_i`` (a fresh leaf) on the same augmented batch
    with ``create_graph=True`` and takes ONE backward of ``s_i = lambda_{i+1} . g_i``, which gives
    ``ds_i/dX_i``, ``ds_i/dlabels_i`` and ``ds_i/dtheta_i = H_i lambda_{i+1}``; then::

        dL/dX_i    += -beta ds_i/dX_i        dL/dbeta += -s_i
        lambda_i    = lambda_{i+1} - beta H_i lambda_{i+1}

    This is the exact derivative (it matches ``unrolled`` to round-off) at the cost of TESLA's
    second loop plus one Hessian-vector product per step, which shares that loop's backward.
    Loop 1 takes its last step with ``create_graph`` and the sweep starts from that graph, so step
    ``T-1`` is not recomputed. Autograd holds one graph at a time; the snapshots are the only memory
    that grows with ``T`` (``snapshot_bytes`` on the device, ``host_snapshot_bytes`` in host memory).
    TESLA is this sweep with ``lambda_i`` frozen at ``lambda_T``.

    Args:
        problem: The matching problem.

    Returns:
        The exact loss and gradients; with the ``device`` policy
        ``snapshot_bytes = (T + 1) * P * itemsize``.
    """
    beta = problem.syn_lr.detach()
    last = problem.num_steps - 1

    def advance(theta: Tensor, i: int) -> Tensor:
        return theta - beta * _first_order_step(problem, theta, i)

    theta = problem.theta_start.detach()
    store = make_snapshot_store(problem.snapshot_policy, theta, problem.num_steps, advance)
    for i in range(last):  # loop 1: no graphs, keep theta_i
        store.keep(i, theta)
        theta = advance(theta, i)
    store.keep(last, theta)
    step: _Step | None = _Step(problem, theta, last)  # the sweep's first step, graph kept
    theta_end = theta - beta * step.grad.detach()
    lam = problem.loss_grad_wrt_end(theta_end)
    beta_grad = torch.zeros((), dtype=lam.dtype, device=lam.device)

    acc = _Accumulator(problem)
    for i in reversed(range(problem.num_steps)):
        if step is None:
            step = _Step(problem, store.get(i), i)
        s = torch.dot(lam, step.grad)
        grads = _grads(s, [step.theta, *step.data_inputs()])
        acc.add(step.index, grads[1], grads[2] if problem.labels_learnable else None, -beta)
        beta_grad -= s.detach()
        lam = lam - beta * grads[0]
        step = None
        del s, grads

    vector_bytes = theta_end.numel() * theta_end.element_size()
    return MatchingGradients(
        loss=problem.matching_loss(theta_end).detach(),
        images=acc.images,
        labels=acc.labels,
        syn_lr=beta_grad.to(problem.syn_lr.dtype),
        theta_end=theta_end,
        snapshot_bytes=store.device_bytes + vector_bytes,  # theta_T is kept on the device too
        host_snapshot_bytes=store.host_bytes,
        snapshot_policy=store.policy,
        recomputed_steps=store.recomputed_steps,
    )
