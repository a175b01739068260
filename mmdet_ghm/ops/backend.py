"""The interface between the GHM autograd Function and the per-element passes (CPU or Triton).

One backend object serves one loss call. It is built inside the Function's forward from the
call's detached inputs and the density's binning, and the Function uses nothing but the methods
below. Every element falls in one *slot* (``bins + 2`` slots)::

    slot 0           invalid element (label weight <= 0): weight 0, not counted
    slot 1 .. bins   bin 0 .. bins-1 (mmdet's test ``edges[i] <= g < edges[i + 1]``)
    slot bins + 1    outside every bin (g NaN, or g beyond the last edge, e.g. a soft target
                     outside [0, 1]): weight 0, not counted, as in mmdet

Order of calls: :meth:`GHMBackend.histogram` once in the forward, then :meth:`GHMBackend.weigh`
(the density's update and the reduced loss); then, for ``reduction='none'`` only,
:meth:`GHMBackend.elementwise_loss`; then :meth:`GHMBackend.grad` once per backward. A reduced
loss needs no second pass: it is ``dot(slot loss sums, slot weights)``. Kept between forward
and backward besides the detached inputs: nothing by the Triton backends; by the C++ GHM-C
backend nothing of the input's size, but for per-element weights (a validity byte per element)
and ``reduction='none'`` (every element's slot); by the PyTorch CPU passes and the C++ GHM-R
backend every element's slot (one byte up to 253 bins, see :mod:`mmdet_ghm.ops.cpu_passes` for
why), and for C++ GHM-R the root ``sqrt(d^2 + mu^2)``.

Constructors (the Function calls them; the arguments are already validated and detached):

- GHM-C: ``backend(pred (M, C), labels (M,) int or None, target (M, C) float or None,
  weight None | (M,) | (M, C), binning)``: integer labels in [0, C] (C = background, in a dtype
  that holds C) or a float target (any values; g outside every bin goes to slot bins + 1). The
  Triton backend checks the labels' range itself (the CPU ones get checked labels): the
  histogram counts an element with a label outside [0, C] in slot bins + 1 with a NaN loss, so
  the call is rejected.
- GHM-R: ``backend(pred, target, weight None | pred's shape, binning, mu)``.

``binning`` is a :class:`mmdet_ghm.binning.Binning` (bins and float32 edges).
"""
import abc
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

# mmdet's weight_reduce_loss divides by (avg_factor + float32 eps) in double precision.
EPS32 = torch.finfo(torch.float32).eps
# The reduction as the fused weighings (the C++ function and the Triton kernel) take it.
REDUCTION_CODES = dict(none=0, mean=1, sum=2)


def slot_factors(slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
                 loss_weight: float, elementwise: bool,
                 dtype: torch.dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """The backward's ``(slot_scale, element-wise grad_out)`` in autograd's order in mmdet: a
    reduced loss ``(((grad_out * loss_weight) / divisor) * slot_weight, None)``, ``'none'``
    ``(slot_weight, grad_out)`` (the element's factor is then ``(grad_out * loss_weight) *
    slot_weight[slot]``)."""
    if elementwise:
        return slot_weight, grad_out
    scale = grad_out.to(dtype) * loss_weight
    if divisor is not None:
        scale = scale / divisor
    return scale * slot_weight.to(dtype), None


class Weighing(NamedTuple):
    """What :meth:`GHMBackend.weigh` hands back to the Function."""
    slot_weight: Tensor  # float32 (bins + 2,): the weight of each slot (0 for 0 and bins + 1)
    loss: Optional[Tensor]  # the reduced loss (NaN when skip); None for reduction='none'
    divisor: Optional[Tensor]  # what a reduced loss was divided by (None or 1: nothing)
    skip: Tensor  # 0-dim: the call was rejected (bad input); the EMA state is left untouched


class GHMBackend(abc.ABC):
    """Per-element passes of one GHM call (see the module docstring). Subclasses set ``numel``
    (pred's element count) and ``dtype`` (the compute dtype) in their constructor."""

    numel: int
    dtype: torch.dtype

    @abc.abstractmethod
    def histogram(self) -> Tuple[Tensor, Tensor]:
        """The forward's one read of the inputs.

        Returns:
            slot_counts: int64 ``(bins + 2,)``, the number of elements in each slot.
            slot_loss_sums: float64 ``(bins + 2,)``, the sum of the elements' *unweighted*
                loss (BCE-with-logits for GHM-C, ASL1 ``sqrt(d^2 + mu^2) - mu`` for GHM-R,
                formed in the compute dtype per element) in each slot. The reduced loss is
                ``sum(slot_loss_sums[1:-1] * slot_weight[1:-1])``. A non-finite sum in slots
                ``1 .. bins + 1`` means a non-finite loss of a valid element: :meth:`weigh`
                rejects the call (slot 0, the invalid elements, may hold anything).
        """

    def weigh(self, slot_counts: Tensor, slot_loss_sums: Tensor, call) -> Weighing:
        """The density's update from this call's histogram and, for a reduced loss, the loss.

        ``call`` (:class:`mmdet_ghm.ops.function._Call`): ``density``, ``reduction``,
        ``loss_weight``, ``tot`` (0-dim float32 normalizer, or None for the number of valid
        elements), ``poison`` (0-dim bool or None) and, where the backend may read device values
        on the host, ``can_raise`` with ``non_finite_message``. The call is rejected (NaN loss,
        state untouched) when a valid element's loss is not finite, ``tot`` is NaN or +inf or
        poison is set; a backend that can raise raises ValueError instead for the first.

        This implementation is PyTorch ops on the counts' device, with ``sync_across_ranks``
        (counts, tot and the flags in one all-reduce) and every density option."""
        density = call.density
        non_finite = ~torch.isfinite(slot_loss_sums[1:]).all()
        poisoned = (torch.zeros((), dtype=torch.bool, device=slot_counts.device)
                    if call.poison is None else call.poison.reshape(()).to(slot_counts.device))
        tot = ((self.numel - slot_counts[0]).to(torch.float32) if call.tot is None
               else call.tot.float())
        flags = torch.stack([non_finite, poisoned]).double()
        slot_counts, tot, flags, world_size = density.synchronize(slot_counts, tot, flags)
        # tot: GHM-R weights summing to NaN or +inf (mmdet's max(sum, 1) makes -inf 1)
        skip = (flags.sum() > 0) | torch.isnan(tot) | (tot == float('inf'))
        if call.can_raise and bool(flags[0] > 0):  # CPU: a read of a small host tensor
            raise ValueError(call.non_finite_message(bool(non_finite)))
        tot = tot.clamp(min=1.0)
        slot_weight = density.update(slot_counts, tot, skip=skip)
        if call.reduction == 'none':
            return Weighing(slot_weight, None, None, skip)
        loss = (slot_loss_sums[1:-1] * slot_weight[1:-1].double()).sum().to(self.dtype)
        divisor = None
        if call.reduction == 'mean':
            # Synced over ranks, divide by the mean tot (mmdet's reduce_mean(avg_factor)):
            # DDP's average of the gradients is then the gradient of the union's loss.
            divisor = (tot.double() / world_size + EPS32).to(self.dtype)
            loss = loss / divisor
        loss = loss * call.loss_weight
        return Weighing(slot_weight, torch.where(skip, torch.full_like(loss, float('nan')), loss),
                        divisor, skip)

    @abc.abstractmethod
    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        """``loss * slot_weight[slot] * loss_weight`` per element, in the compute dtype and
        pred's shape (``reduction='none'``), in mmdet's rounding order. Invalid elements (weight
        0) give 0 whatever their loss."""

    @abc.abstractmethod
    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        """The backward's one read of the inputs and one write: d(loss)/d(pred) in pred's dtype
        and shape.

        Args:
            slot_weight, divisor: :meth:`weigh`'s.
            grad_out: the incoming gradient: 0-dim for a reduced loss, pred's shape for
                ``reduction='none'`` (``elementwise``).
            loss_weight: the loss module's.

        The gradient is ``dloss/dx * factor`` with the factor of :func:`slot_factors`:
        ``sigmoid(x) - t`` for GHM-C, ``d / sqrt(d^2 + mu^2)`` (in autograd's rounding order)
        for GHM-R.
        """

    def backward_reads(self) -> Tuple[Tensor, ...]:
        """The caller's tensors other than pred (or views sharing their version counter) that
        :meth:`grad` reads again. The Function saves them for backward, so that autograd
        rejects one modified in place after the forward instead of a gradient computed from the
        modified values. Nothing by default: a backend that keeps what it needs reads nothing."""
        return ()
