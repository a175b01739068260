"""The gradient density shared by GHM-C and GHM-R: counts -> EMA -> per-bin weights.

GHM (Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019, arXiv:1811.05181) splits
the gradient norm range [0, 1] into ``bins`` equal bins, counts the valid elements in each bin, and
gives every element of bin ``b`` the weight ``tot / density[b] / n``, where ``n`` is the number of
non-empty bins in this call. With ``momentum > 0`` the density is an exponential moving average of
the counts, updated only for the bins that are non-empty in the call.

The EMA and the weights reproduce mmdet 3.3.0's ``GHMC``/``GHMR`` bit for bit (the same rounding
order) on the device: no ``.item()``, no host sync, no Python loop over bins. Which bin an element
falls in is :mod:`mmdet_ghm.binning`'s; the per-element passes (:mod:`mmdet_ghm.ops`) hand over slot
counts and take slot weights, in the slot layout of :mod:`mmdet_ghm.ops.backend`.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .binning import Binning, edges_layout, mmdet_edges
from .inputs import GHMArgumentError, check_bins, check_momentum, compute_dtype


class GradientDensity(nn.Module):
    """Slot counts of gradient norms, their EMA over calls, and the per-bin GHM weights.

    Args:
        bins: number of equal bins over [0, 1].
        momentum: EMA momentum in [0, 1); 0 uses this call's counts alone.
        last_edge: upper edge of the last bin (mmdet: ``1 + 1e-6`` for GHM-C, so that a saturated
            sigmoid with g == 1 is counted, and ``1e3`` for GHM-R).
        bias_correction: divide the EMA by ``1 - momentum ** k`` (k = the bin's updates so far),
            as Adam does, so that the first weights are not inflated by ``1 / (1 - momentum)``.
            Off by default: mmdet's numbers.
        sync_across_ranks: all-reduce the counts and ``tot`` over the default process group
            before the weights are formed, so that every rank uses the global density and keeps
            the same state. Off by default: each rank keeps its own histogram, as in mmdet.

    Buffers (persistent whatever the options, so checkpoint keys never depend on them):
        edges: float32 ``(bins + 1,)``, ``arange(bins + 1) / bins`` with the last edge replaced.
        acc_sum: float32 ``(bins,)``, the EMA of the counts (stays 0 when momentum is 0).
        num_updates: float32 ``(bins,)``, how often each bin's EMA was updated (inf for the
            bins of a state loaded from mmdet's checkpoints: an EMA of unknown age).
    """

    def __init__(self, bins: int = 10, momentum: float = 0.0, last_edge: float = 1.0 + 1e-6,
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        super().__init__()
        check_bins(bins)
        check_momentum(momentum)
        self.bins = int(bins)
        self.momentum = float(momentum)
        self.bias_correction = bool(bias_correction)
        self.sync_across_ranks = bool(sync_across_ranks)
        self.register_buffer('edges', mmdet_edges(self.bins, last_edge))
        self.register_buffer('acc_sum', torch.zeros(self.bins))
        self.register_buffer('num_updates', torch.zeros(self.bins))
        self._binning: Optional[Binning] = None
        self._binning_edition: Tuple[Optional[int], Optional[int]] = (None, None)
        self._set_binning(edges_layout(self.edges))
        self._recorded: Optional[Tensor] = None  # see start_recording()

    @property
    def binning(self) -> Binning:
        """The binning of the current edges (on the edges' device), rebuilt when the edges
        tensor is replaced or edited in place (its version counter and storage)."""
        binning = self._binning
        if binning.edges is not self.edges or self._binning_edition != _edition(self.edges):
            self._set_binning(edges_layout(self.edges))  # reads the edges: once per change
        return self._binning

    def _set_binning(self, layout: Tuple[bool, bool]) -> None:
        self._binning = Binning(self.edges, layout)
        self._binning_edition = _edition(self.edges)

    @property
    def num_slots(self) -> int:
        return self.bins + 2

    def slot_index(self, g: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """Slots of gradient norms ``g >= 0``; ``valid`` (broadcasting to g) False -> slot 0."""
        slots = self.binning.slots(g.detach().to(compute_dtype(g)))
        if valid is not None:
            slots = slots.masked_fill(~valid.bool(), 0)
        return slots

    def count(self, slots: Tensor) -> Tensor:
        """int64 histogram of slot indices, ``(bins + 2,)``."""
        return torch.bincount(slots.reshape(-1), minlength=self.num_slots)

    def extra_repr(self) -> str:
        text = f'bins={self.bins}, momentum={self.momentum}'
        if self.bias_correction:
            text += ', bias_correction=True'
        if self.sync_across_ranks:
            text += ', sync_across_ranks=True'
        return text

    def synchronizes(self) -> bool:
        """Whether :meth:`synchronize` all-reduces (``sync_across_ranks`` in a process group of
        several ranks)."""
        return (self.sync_across_ranks and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1)

    def synchronize(self, slot_counts: Tensor, tot: Tensor,
                    flags: Tensor) -> Tuple[Tensor, Tensor, Tensor, int]:
        """With ``sync_across_ranks`` in a process group of several ranks: the counts, tot and
        the float64 ``flags`` (e.g. 1 where this rank's call is bad) summed over the ranks in one
        all-reduce (no host sync), and the number of ranks; else the arguments and 1. Every rank
        then sees the same flags and can raise the same error: none is left in a collective."""
        if not self.synchronizes():
            return slot_counts, tot, flags, 1
        # float64 holds the integer counts exactly (below 2 ** 53)
        n = slot_counts.numel()
        packed = torch.cat([slot_counts.double(), tot.double().reshape(1), flags.double()])
        dist.all_reduce(packed)
        return (packed[:n].to(slot_counts.dtype), packed[n].float(), packed[n + 1:],
                dist.get_world_size())

    def start_recording(self) -> None:
        """Sum the slot counts of the following calls (on the device, no sync) until
        :meth:`stop_recording`; nothing is done on calls made while not recording."""
        self._recorded = torch.zeros(self.num_slots, dtype=torch.int64, device=self.edges.device)

    def stop_recording(self) -> Optional[Tensor]:
        """The ``(bins + 2,)`` slot counts summed since :meth:`start_recording` (None if it was
        not called); recording stops."""
        recorded, self._recorded = self._recorded, None
        return recorded

    def record(self, slot_counts: Tensor) -> None:
        """Add a call's slot counts to the recording, if one is running (:meth:`update` does,
        and the backends' fused weighings)."""
        if self._recorded is not None:
            self._recorded += slot_counts

    def check_state(self) -> None:
        """With momentum > 0 (else the state is never read): GHMArgumentError naming a state
        buffer (assigned, or loaded with ``assign=True``) that is not one entry per bin: a shape
        other than ``(bins,)`` (the weighings would index past a shorter one; mmdet raises an
        IndexError), or an expanded view whose entries share one element."""
        if self.momentum == 0:
            return
        for name in ('acc_sum', 'num_updates'):
            state = getattr(self, name)
            if state.shape != (self.bins,) or (self.bins > 1 and state.stride(0) == 0):
                what = 'an expanded view' if state.shape == (self.bins,) else 'a tensor'
                raise GHMArgumentError(
                    f'{name} must have one entry per bin, shape ({self.bins},), got {what} of '
                    f'shape {tuple(state.shape)}')

    def fused_update_on(self, device: torch.device) -> bool:
        """Whether a fused weighing (C++ or Triton) may do :meth:`update`'s work on ``device``:
        no all-reduce between counting and weighing, no ``bias_correction``, and a state it can
        write through pointers (both buffers contiguous float32 there). Otherwise
        :meth:`update`'s PyTorch ops do it (also a float64 or strided state, as mmdet's
        indexing would)."""
        return (not self.synchronizes() and not self.bias_correction
                and all(plain_float32_on(t, device) for t in (self.acc_sum, self.num_updates)))

    def mark_state_written(self) -> None:
        """Bump the EMA state's version counters after a fused weighing wrote it through a
        pointer, as an in-place PyTorch op would: a graph that saved the state then fails in
        backward ("modified by an inplace operation") instead of reading the new values."""
        if self.momentum > 0:
            torch.autograd.graph.increment_version(self.acc_sum)
            torch.autograd.graph.increment_version(self.num_updates)

    def _ema_density(self) -> Tensor:
        if not self.bias_correction:
            return self.acc_sum
        # in float64: momentum ** k in float32 is off by up to 20% near momentum 1
        correction = 1.0 - torch.pow(self.momentum, self.num_updates.double())
        return (self.acc_sum.double() / correction).float()

    def slot_weights(self, slot_counts: Tensor) -> Tensor:
        """The per-bin weights that counts would get in one call against the current state
        (without changing it), ``(bins,)`` float32: what a diagnostic plots against g."""
        counts = slot_counts[1:-1].to(self.acc_sum.device)
        tot = counts.sum().clamp(min=1).float()
        nonempty = counts > 0
        density = self._ema_density() if self.momentum > 0 else counts.float()
        weights = torch.where(nonempty & (density > 0), tot / density, torch.zeros_like(density))
        return weights / nonempty.sum().clamp(min=1)

    @torch.no_grad()
    def update(self, slot_counts: Tensor, tot: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        """Advance the EMA with this call's counts and return the slot weight table.

        Args:
            slot_counts: integer ``(bins + 2,)`` histogram of slots.
            tot: 0-dim float32, the normalizer (already clamped to >= 1).
            skip: optional 0-dim bool tensor; where True the EMA state is left as it was (a call
                with bad input must not poison the state), decided on the device without a sync.

        Returns:
            float32 ``(bins + 2,)``: ``tot / density / n`` for non-empty bins, 0 elsewhere.
        """
        self.record(slot_counts)
        counts = slot_counts[1:-1]
        nonempty = counts > 0
        num_nonempty = nonempty.sum().clamp_(min=1).to(torch.float32)
        tot = tot.to(torch.float32)
        if self.momentum > 0:
            # mmdet: acc = m * acc + (1 - m) * count, the second term formed in double precision
            # and rounded to the dtype of m * acc (float32, or a float64 state's)
            ema = self.acc_sum * self.momentum + ((1 - self.momentum) * counts.double()).to(
                torch.result_type(self.acc_sum, self.momentum))
            updated = nonempty if skip is None else nonempty & ~skip
            self.acc_sum.copy_(torch.where(updated, ema, self.acc_sum))
            self.num_updates.add_(updated)
            # mmdet's `tot / acc` is Tensor.__rtruediv__, i.e. reciprocal(acc) * tot; float32
            # whatever the state's dtype
            weights = (self._ema_density().reciprocal() * tot).float()
        else:
            weights = (tot.double() / counts.double()).float()
        weights = torch.where(nonempty, weights, torch.zeros_like(weights)) / num_nonempty
        return nn.functional.pad(weights, (1, 1))

    def forward(self, g: Tensor, valid: Optional[Tensor] = None,
                tot: Optional[Tensor] = None) -> Tensor:
        """Per-element float32 GHM weights for gradient norms ``g`` (any shape).

        Args:
            g: gradient norms in [0, 1], any shape and floating dtype.
            valid: bool mask of ``g``'s shape (None: all valid); invalid elements weigh 0.
            tot: normalizer (None: the number of valid elements); clamped to >= 1.

        Updates the EMA state like one call of mmdet's loss does.
        """
        if not torch.is_floating_point(g):
            raise ValueError(f'g must be a floating tensor of gradient norms, got {g.dtype}')
        if valid is not None and valid.shape != g.shape:
            raise ValueError(f'valid must have the shape of g {tuple(g.shape)}, '
                             f'got {tuple(valid.shape)}')
        self.check_state()
        g = g.detach()
        valid = g >= 0 if valid is None else valid.bool() & (g >= 0)
        slots = self.slot_index(g, valid)
        slot_counts = self.count(slots)
        if tot is None:
            tot = (slots.numel() - slot_counts[0]).to(torch.float32)
        tot = torch.as_tensor(tot, dtype=torch.float32, device=g.device).clamp(min=1.0)
        return self.update(slot_counts, tot)[slots.long()]

    def _apply(self, fn, recurse=True):
        # model.half() / .double() move the state but must not round it (1 + 1e-6 is 1 in fp16):
        # the buffers follow the device and stay float32.
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        binning = self._binning  # moved, not changed: no read on the device, unless edited before
        if binning.edges is before['edges'] and self._binning_edition == _edition(binning.edges):
            self._set_binning((binning.uniform_edges, binning.increasing_edges))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # mmdet's checkpoints have no num_updates, and no acc_sum when momentum == 0: keep ours.
        # Their acc_sum is an EMA of unknown age, used as it is: bins it holds count as updated
        # infinitely often (bias_correction's 1 - m^k is then 1), the others never.
        acc_sum = state_dict.get(prefix + 'acc_sum')
        if (isinstance(acc_sum, Tensor) and acc_sum.shape == self.acc_sum.shape
                and prefix + 'num_updates' not in state_dict):
            state_dict[prefix + 'num_updates'] = torch.where(
                acc_sum != 0, float('inf'), 0.0).to(torch.float32)
        for key in ('acc_sum', 'num_updates'):
            state_dict.setdefault(prefix + key, getattr(self, key).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._set_binning(edges_layout(self.edges))


def plain_float32_on(t: Tensor, device: torch.device) -> bool:
    """What a kernel reads or writes through a pointer: a contiguous float32 tensor on
    ``device``."""
    return t.device == device and t.dtype == torch.float32 and t.is_contiguous()


def _edition(t: Tensor) -> Tuple[Optional[int], Optional[int]]:
    """What moves when t's values may have changed, read without reading them: its version
    counter (bumped by every in-place op) and its storage (swapped by ``t.data = u``); None
    where an inference tensor or a functorch wrapper has none. An in-place edit through
    ``t.data`` moves neither: PyTorch does not count it. The cached :class:`Binning` holds a
    view of the edges it was built from (``last_edge``), so their storage cannot be freed and
    its address reused while the edition is compared."""
    try:
        version = t._version
    except RuntimeError:
        version = None
    try:
        pointer = t.data_ptr()
    except RuntimeError:
        pointer = None
    return version, pointer
