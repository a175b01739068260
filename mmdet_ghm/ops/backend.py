"""The interface between the GHM autograd Function and the per-element passes (CPU or Triton).

One backend object serves one loss call. It is built inside the Function's forward from the
call's detached inputs and the density's binning, and the Function uses nothing but the methods
below. Every element falls in one *slot* (``bins + 2`` slots)::

    slot 0           invalid element (label weight <= 0): weight 0, not counted
    slot 1 .. bins   bin 0 .. bins-1 (mmdet's test ``edges[i] <= g < edges[i + 1]``)
    slot bins + 1    outside every bin (g NaN, or g beyond the last edge, e.g. a soft target
                     outside [0, 1]): weight 0, not counted, as in mmdet

Order of calls: :meth:`GHMBackend.histogram` once in the forward; then, for ``reduction='none'``
only, :meth:`GHMBackend.elementwise_loss`; then :meth:`GHMBackend.grad` once per backward. A
reduced loss needs no second pass: it is ``dot(slot loss sums, slot weights)``. Between forward
and backward a backend keeps nothing of the input's size but, on CPU, one uint8 slot per element
(see :mod:`mmdet_ghm.ops.cpu_passes` for why).

Constructors (the Function calls them; the arguments are already validated and detached):

- GHM-C: ``backend(pred (M, C), labels (M,) int or None, target (M, C) float or None,
  weight None | (M,) | (M, C), binning)``: integer labels in [0, C] (C = background) or a
  float target (any values; g outside every bin goes to slot bins + 1).
- GHM-R: ``backend(pred, target, weight None | pred's shape, binning, mu)``.

``binning`` is a :class:`mmdet_ghm.binning.Binning` (bins and float32 edges).
"""
import abc
from typing import Optional, Tuple

import torch
from torch import Tensor


def compute_dtype(pred: Tensor) -> torch.dtype:
    """The arithmetic's dtype: float64 stays float64 (mmdet's numbers for a model.double()),
    anything else float32."""
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def mu_squared(mu: float, dtype: torch.dtype) -> float:
    """mmdet adds the Python double ``mu * mu`` to the tensor: it is rounded to its dtype first."""
    return float(torch.tensor(mu * mu, dtype=dtype))


class GHMBackend(abc.ABC):
    """Per-element passes of one GHM call (see the module docstring)."""

    @abc.abstractmethod
    def histogram(self) -> Tuple[Tensor, Tensor]:
        """The forward's one read of the inputs.

        Returns:
            slot_counts: int64 ``(bins + 2,)``, the number of elements in each slot.
            slot_loss_sums: float64 ``(bins + 2,)``, the sum of the elements' *unweighted*
                loss (BCE-with-logits for GHM-C, ASL1 ``sqrt(d^2 + mu^2) - mu`` for GHM-R,
                formed in float32 per element) in each slot. The reduced loss is
                ``sum(slot_loss_sums[1:-1] * slot_weight[1:-1])``. A non-finite sum in slots
                ``1 .. bins + 1`` means a non-finite loss of a valid element: the Function
                rejects the call (slot 0, the invalid elements, may hold anything).
        """

    @abc.abstractmethod
    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        """float32 ``loss * slot_weight[slot] * loss_weight`` per element, pred's shape
        (``reduction='none'``), in mmdet's rounding order. Invalid elements (weight 0) give 0
        whatever their loss."""

    @abc.abstractmethod
    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor] = None,
             loss_weight: float = 1.0) -> Tensor:
        """The backward's one read of the inputs and one write: d(loss)/d(pred) in pred's dtype
        and shape.

        Args:
            slot_scale: float32 ``(bins + 2,)``, the factor of each slot (0 for slots 0 and
                bins + 1). A reduced loss passes ``(grad_out * loss_weight / divisor) *
                slot_weight`` and no ``grad_out``.
            grad_out: for ``reduction='none'``, the incoming gradient of pred's shape; the
                element's factor is then ``(grad_out * loss_weight) * slot_scale[slot]``
                (autograd's order in mmdet).
            loss_weight: see ``grad_out``.

        The gradient is ``dloss/dx * factor``: ``sigmoid(x) - t`` for GHM-C, ``d / sqrt(d^2 +
        mu^2)`` (in autograd's rounding order) for GHM-R.
        """
