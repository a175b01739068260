"""The gradient density shared by GHM-C and GHM-R.

GHM (Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019, arXiv:1811.05181) splits
the gradient norm range [0, 1] into ``bins`` equal bins, counts the valid elements in each bin, and
gives every element of bin ``b`` the weight ``tot / density[b] / n``, where ``n`` is the number of
non-empty bins in this call. With ``momentum > 0`` the density is an exponential moving average of
the counts, updated only for the bins that are non-empty in the call.

Everything here reproduces mmdet 3.3.0's ``GHMC``/``GHMR`` bit for bit (float32 edges, the same
rounding order for the EMA and the weights) while staying on the device: no ``.item()``, no host
sync, no Python loop over bins. The per-element passes live in :mod:`mmdet_ghm.ops`; they only
produce *slot* histograms and consume *slot* weight tables, laid out as::

    slot 0           invalid element (label weight <= 0): weight 0, not counted
    slot 1 .. bins   bin 0 .. bins-1
    slot bins + 1    outside every bin (a NaN gradient norm): weight 0, not counted
"""
import functools
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn


def check_bins_momentum(bins, momentum) -> None:
    """Raise ValueError unless ``bins`` is an int >= 1 and ``momentum`` a float in [0, 1)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f'bins must be an int >= 1, got {bins!r}')
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0.0 <= momentum < 1.0:
        raise ValueError(f'momentum must be a float in [0, 1), got {momentum!r}')


def _bucketize_slots(g: Tensor, edges: Tensor) -> Tensor:
    """The reference test ``edges[i] <= g < edges[i + 1]`` as slots (a binary search per element)."""
    return torch.bucketize(g, edges, right=True).clamp_(max=edges.numel())


def build_slot_tables(edges: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """Lookup tables that bin any float32 g >= 0 exactly like ``_bucketize_slots``, in 6 cheap ops.

    The key of g is the top 16 bits of its float32 pattern (sign dropped): 2**16 consecutive floats,
    at most 1/256 wide below 1, so with bins <= 256 a bucket holds at most one edge. ``slot[key]`` is
    the slot of the bucket's first float and ``step[key]`` the bit pattern of the edge inside the
    bucket (INT32_MAX if none): slot = slot[key] + (bits >= step[key]). Built from the reference
    itself, so exact by construction; None when some bucket holds two edges (bins > 256).
    """
    edges = edges.detach().to('cpu', torch.float32)
    keys = torch.arange(1 << 15, dtype=torch.int32) << 16
    first = _bucketize_slots(keys.view(torch.float32), edges)
    last = _bucketize_slots((keys | 0xFFFF).view(torch.float32), edges)
    if (last - first > 1).any():
        return None
    step = edges.view(torch.int32)[first.clamp(max=edges.numel() - 1)]
    step = torch.where(last > first, step, torch.iinfo(torch.int32).max)
    dtype = torch.uint8 if edges.numel() + 1 <= 255 else torch.int32
    return first.to(dtype), step


# Most elements share a slot (easy negatives), so a plain bincount stalls on incrementing one
# counter again and again; spreading consecutive elements over 4 copies of the histogram (slot +
# 64 * (i % 4)) lets the increments overlap: about 30% less time for the count on CPU.
SPREAD_COPIES, SPREAD_STRIDE = 4, 64


@functools.lru_cache(maxsize=16)
def _spread_offsets(numel: int) -> Tensor:
    return ((torch.arange(numel) % SPREAD_COPIES) * SPREAD_STRIDE).to(torch.uint8)


def unit_interval_slots(g: Tensor, bins: int, out: Optional[Tensor] = None) -> Tensor:
    """uint8 slots of float32 g in [0, 1] for the edges ``float32(i / bins)`` (last edge > 1),
    equal to ``_bucketize_slots``: ``floor((g + ulp(g) / 2) * bins) + 1`` in float64, 4 cheap
    ops and no lookup. NaN gets an unspecified slot: callers reject non-finite inputs.

    Why exact: ``g + ulp(g) / 2`` has 25 significant bits, ``* bins`` at most 33, so float64
    holds both exactly. Each edge ``e_i`` is the float nearest ``i / bins`` (never a tie: ``i /
    bins`` is either a float or not dyadic), so the only float on the wrong side of ``i / bins``
    is ``e_i`` itself when it was rounded down, and it lies within half an ulp: adding half an
    ulp lifts exactly that one over ``i / bins`` and no float below it. 1.0 (and anything below
    the last edge) is clamped into the last bin, as the last edge is above 1.
    """
    h = g.to(torch.float32).to(torch.float64)
    h.view(torch.int64).add_(1 << 28)  # + half a float32 ulp: float64 has 29 more mantissa bits
    h.mul_(bins)
    torch.clamp(h, max=bins - 1, out=h)
    slots = h.to(torch.uint8) if out is None else out.copy_(h)
    return slots.add_(1)


def slot_index(g: Tensor, edges: Tensor, valid: Optional[Tensor] = None,
               tables: Optional[Tuple[Tensor, Tensor]] = None,
               out: Optional[Tensor] = None) -> Tensor:
    """Slot of each gradient norm ``g`` >= 0 (see the module docstring), bit-exact with mmdet's
    ``edges[i] <= g < edges[i + 1]`` on the float32 edges (``floor(g * bins)`` is not, for a few
    values on a boundary). NaN goes to the last slot; ``valid`` (any shape that broadcasts to g)
    False to slot 0. ``tables`` from :func:`build_slot_tables` make it fast; without them (or for
    bins > 256) it is a binary search. Returns uint8 slots when bins <= 253, else int64/int32;
    ``out``, with tables, receives them (it must be contiguous, of g's shape and the table's dtype).
    """
    g = g.to(torch.float32)
    if tables is None:
        slots = _bucketize_slots(g, edges)
        if out is not None:
            slots = out.copy_(slots)
    else:
        slot_table, step_table = tables
        bits = g.contiguous().view(torch.int32)
        keys = ((bits >> 16) & 0x7FFF).view(-1)
        if out is None:
            slots = slot_table.index_select(0, keys).view(g.shape)
        else:
            slots = torch.index_select(slot_table, 0, keys, out=out.view(-1)).view(g.shape)
        slots += bits >= step_table.index_select(0, keys).view(g.shape)
    if valid is not None:
        slots.masked_fill_(~valid, 0)
    return slots


class GradientDensity(nn.Module):
    """Histogram of gradient norms, its EMA over calls, and the per-bin GHM weights.

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
        num_updates: float32 ``(bins,)``, how often each bin's EMA was updated.
    """

    def __init__(self, bins: int = 10, momentum: float = 0.0, last_edge: float = 1.0 + 1e-6,
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        super().__init__()
        check_bins_momentum(bins, momentum)
        self.bins = bins
        self.momentum = float(momentum)
        self.bias_correction = bool(bias_correction)
        self.sync_across_ranks = bool(sync_across_ranks)
        edges = torch.arange(bins + 1).float() / bins
        edges[-1] = last_edge
        self.register_buffer('edges', edges)
        self.register_buffer('acc_sum', torch.zeros(bins))
        self.register_buffer('num_updates', torch.zeros(bins))
        self._set_slot_tables()
        self._recorded: Optional[Tensor] = None  # see start_recording()

    def _set_slot_tables(self) -> None:
        # derived from the edges, so not saved; buffers so that they follow .to(device)
        tables = build_slot_tables(self.edges)
        for name, table in zip(('slot_table', 'step_table'), tables or (None, None)):
            self.register_buffer(name, None if table is None else table.to(self.edges.device),
                                 persistent=False)
        edges = self.edges.detach().cpu()
        self._unit_edges = (self.bins <= 253 and float(edges[-1]) > 1.0 and torch.equal(
            edges[:-1], torch.arange(self.bins, dtype=torch.float32) / self.bins))

    @property
    def slot_tables(self) -> Optional[Tuple[Tensor, Tensor]]:
        return None if self.slot_table is None else (self.slot_table, self.step_table)

    def slot_index(self, g: Tensor, valid: Optional[Tensor] = None,
                   out: Optional[Tensor] = None, finite_unit: bool = False) -> Tensor:
        """Slots of gradient norms g >= 0 (see :func:`slot_index`). ``finite_unit=True`` promises
        g in [0, 1] without NaN (the caller checks): with mmdet's edges the slots then come from
        :func:`unit_interval_slots`, without a lookup."""
        if finite_unit and self._unit_edges and g.device.type == 'cpu' and valid is None:
            return unit_interval_slots(g, self.bins, out)
        return slot_index(g, self.edges, valid, self.slot_tables, out)

    @property
    def num_slots(self) -> int:
        return self.bins + 2

    @property
    def slot_dtype(self) -> torch.dtype:
        """dtype of :meth:`slot_index`'s result (uint8 up to 253 bins)."""
        return torch.int64 if self.slot_table is None else self.slot_table.dtype

    def extra_repr(self) -> str:
        text = f'bins={self.bins}, momentum={self.momentum}'
        if self.bias_correction:
            text += ', bias_correction=True'
        if self.sync_across_ranks:
            text += ', sync_across_ranks=True'
        return text

    def synchronize(self, slot_counts: Tensor, tot: Tensor) -> Tuple[Tensor, Tensor, int]:
        """With ``sync_across_ranks`` in a process group of several ranks: the counts and tot
        summed over the ranks (one all-reduce, no host sync) and the number of ranks; else the
        arguments and 1."""
        if not (self.sync_across_ranks and dist.is_available() and dist.is_initialized()):
            return slot_counts, tot, 1
        world_size = dist.get_world_size()
        if world_size == 1:
            return slot_counts, tot, 1
        # float64 holds the integer counts exactly (below 2 ** 53)
        packed = torch.cat([slot_counts.double(), tot.double().reshape(1)])
        dist.all_reduce(packed)
        return packed[:-1].to(slot_counts.dtype), packed[-1].float(), world_size

    def count(self, slots: Tensor) -> Tensor:
        """int64 histogram of slot indices, ``(bins + 2,)``."""
        flat = slots.reshape(-1)
        if (flat.dtype != torch.uint8 or flat.device.type != 'cpu'
                or self.num_slots > SPREAD_STRIDE):
            return torch.bincount(flat, minlength=self.num_slots)
        spread = torch.add(flat, _spread_offsets(flat.numel()))
        counts = torch.bincount(spread, minlength=SPREAD_COPIES * SPREAD_STRIDE)
        return counts.view(SPREAD_COPIES, SPREAD_STRIDE).sum(0)[:self.num_slots]

    def start_recording(self) -> None:
        """Sum the slot counts of the following calls (on the device, no sync) until
        :meth:`stop_recording`; nothing is done on calls made while not recording."""
        self._recorded = torch.zeros(self.num_slots, dtype=torch.int64, device=self.edges.device)

    def stop_recording(self) -> Optional[Tensor]:
        """The ``(bins + 2,)`` slot counts summed since :meth:`start_recording` (None if it was
        not called); recording stops."""
        recorded, self._recorded = self._recorded, None
        return recorded

    def _ema_density(self) -> Tensor:
        if not self.bias_correction:
            return self.acc_sum
        return self.acc_sum / (1 - torch.pow(self.momentum, self.num_updates))

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
        if self._recorded is not None:
            self._recorded += slot_counts
        counts = slot_counts[1:-1]
        nonempty = counts > 0
        num_nonempty = nonempty.sum().clamp_(min=1).to(torch.float32)
        tot = tot.to(torch.float32)
        if self.momentum > 0:
            # mmdet: acc = m * acc + (1 - m) * count, the second term formed in double precision.
            ema = self.acc_sum * self.momentum + ((1 - self.momentum) * counts.double()).float()
            updated = nonempty if skip is None else nonempty & ~skip
            self.acc_sum.copy_(torch.where(updated, ema, self.acc_sum))
            self.num_updates.add_(updated)
            # mmdet's `tot / acc` is Tensor.__rtruediv__, i.e. reciprocal(acc) * tot.
            weights = self._ema_density().reciprocal() * tot
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
        g = g.detach().float()
        valid = g >= 0 if valid is None else valid.bool() & (g >= 0)
        slots = self.slot_index(g, valid)
        slot_counts = self.count(slots)
        if tot is None:
            tot = (slots.numel() - slot_counts[0]).to(torch.float32)
        tot = torch.as_tensor(tot, dtype=torch.float32, device=g.device).clamp(min=1.0)
        return self.update(slot_counts, tot)[slots.long()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # mmdet's checkpoints have no num_updates, and no acc_sum when momentum == 0: keep ours.
        for key in ('acc_sum', 'num_updates'):
            state_dict.setdefault(prefix + key, getattr(self, key).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._set_slot_tables()


