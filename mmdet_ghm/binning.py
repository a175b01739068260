"""Which bin a gradient norm falls in: mmdet's rule, one exact formula and the generic search.

mmdet 3.3.0's ``GHMC``/``GHMR`` put ``g`` in bin ``i`` when ``edges[i] <= g < edges[i + 1]`` on the
float32 edges ``arange(bins + 1).float() / bins`` with the last edge replaced (``1 + 1e-6`` for
GHM-C, ``1e3`` for GHM-R). ``floor(g * bins)`` disagrees with those edges for a few values right on
a boundary; everything here gives exactly mmdet's bins. Results are *slots* (see
:mod:`mmdet_ghm.ops.backend`): ``1 + bin``, ``bins + 1`` for ``g >= edges[-1]``.

Two implementations of the one rule:

- :func:`search_slots`, the reference: a binary search over the edges (``torch.bucketize``) in g's
  own dtype, as mmdet compares float64 g with float32 edges after promotion.
- :func:`unit_interval_slots`, for float32 g in [0, 1] and mmdet's own edges: the same slots in a
  few elementwise ops and no search (the PyTorch CPU passes; ``unit_slot`` in ``ops/ghm_cpu.cpp``
  is the same formula for the C++ passes). Proof in its docstring; tested against the reference
  for every float within 1000 ulps of every edge, bins 1-64, 100, 127, 200 and 253 (the C++
  copy: 300 ulps).

What "equal to mmdet" guarantees (CPU): the bins depend only on the value of g, so counts, EMA
state and weights equal mmdet's whenever g is bitwise equal to mmdet's g. g goes through one
operation that is not correctly rounded on CPU: PyTorch's sigmoid for GHM-C (``|sigmoid(x) - t|``)
and its sqrt for GHM-R (``|d| / sqrt(d^2 + mu^2)``); their vectorized loop and their scalar tail
round the last bit differently, and which elements take the scalar tail depends on the tensor's
length and on how the intra-op threads split it. mmdet_ghm evaluates those two ops so that every
element takes the vectorized loop whatever the thread count or memory layout
(:func:`mmdet_ghm.ops.cpu_passes._exact`): the same inputs give the same slots, EMA state,
gradient and loss on any number of threads. mmdet's own bits depend on its thread
split: an element of its scalar tails (at most 31 per thread and per op) that lies within an ulp of
a bin edge can land in the neighbouring bin there, and nowhere else. The vector width (AVX2 /
AVX-512, chosen by PyTorch at run time) is part of "the same machine"; on a GPU the kernels'
sigmoid and sqrt equal PyTorch's CUDA ops (see the Triton backend).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .inputs import GHMArgumentError

#: slots stay uint8 (one byte per element) up to this many bins (slot bins + 1 <= 254)
MAX_UINT8_BINS = 253


def mmdet_edges(bins: int, last_edge: float) -> Tensor:
    """float32 ``(bins + 1,)`` edges as mmdet builds them: ``arange(bins + 1).float() / bins``
    (each the float nearest ``i / bins``), the last one replaced by ``last_edge``."""
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] = last_edge
    return edges


def edges_layout(edges: Tensor) -> Tuple[bool, bool]:
    """(uniform, increasing) of ``edges``: whether they are mmdet's uniform edges,
    ``float32(i / bins)`` with a last edge above 1 (the condition of :func:`unit_interval_slots`
    and of the Triton kernels' binning), and whether they strictly increase (the condition of
    any binning into one slot per element). Reads the edges on the host: call once per change of
    the edges, not per loss call."""
    edges = edges.detach().to('cpu', torch.float32)
    bins = edges.numel() - 1
    uniform = (float(edges[-1]) > 1.0
               and torch.equal(edges[:-1], torch.arange(bins, dtype=torch.float32) / bins))
    return uniform, bool((edges[1:] > edges[:-1]).all())


def slot_dtype(bins: int) -> torch.dtype:
    return torch.uint8 if bins <= MAX_UINT8_BINS else torch.int64


def search_slots(g: Tensor, edges: Tensor) -> Tensor:
    """The reference: slot of every ``g >= 0`` by mmdet's test on ``edges`` (compared in g's
    dtype), int64; g at or above the last edge, and NaN, go to slot ``bins + 1``."""
    return torch.bucketize(g, edges.to(g.dtype), right=True)


def unit_interval_slots(g: Tensor, bins: int, out: Optional[Tensor] = None,
                        work: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """Slots of float32 ``g`` in [0, 1] for mmdet's edges ``float32(i / bins)`` (last edge > 1),
    equal to :func:`search_slots`: ``floor((g + ulp(g) / 2) * bins) + 1`` computed in float64.
    uint8 (bins <= 253), or written into ``out``; ``work``: optional float64 and int32 buffers of
    g's size for the intermediates. Values above 1 and NaN give some slot in 1 .. bins: callers
    send g beyond the last edge to slot ``bins + 1`` themselves, and a NaN g comes with a NaN
    loss, which makes the call rejected.

    Why exact: ``g + ulp(g) / 2`` has 25 significant bits, ``* bins`` at most 33, so float64
    holds both exactly. Each edge ``e_i`` is the float nearest ``i / bins`` (never a tie: ``i /
    bins`` is either a float or not dyadic), so the only float on the wrong side of ``i / bins``
    is ``e_i`` itself when it was rounded down, and it lies within half an ulp: adding half an
    ulp lifts exactly that one over ``i / bins`` and no float below it.
    """
    h = g.to(torch.float64) if work is None else work[0].copy_(g)
    h.view(torch.int64).add_(1 << 28)  # + half a float32 ulp: float64 has 29 more mantissa bits
    h.mul_(bins)  # exact: at most 33 significant bits
    # floor via int32 (g <= 1: h < 254), then clamp and + 1 in uint8: cheaper than in float64.
    # g > 1 or NaN give some value here that the clamp keeps inside 1 .. bins.
    floor = h.to(torch.int32) if work is None else work[1].copy_(h)
    slots = floor.to(torch.uint8) if out is None else out.copy_(floor)
    return slots.clamp_(max=bins - 1).add_(1)


class Binning:
    """The binning of one :class:`~mmdet_ghm.density.GradientDensity`: ``bins``, its float32
    ``edges`` (on the density's device), their :func:`edges_layout` and whether
    :func:`unit_interval_slots` applies (uniform edges and uint8 slots)."""

    def __init__(self, edges: Tensor, layout: Tuple[bool, bool]):
        self.edges = edges
        self.bins = edges.numel() - 1
        self.uniform_edges, self.increasing_edges = layout
        self.unit_edges = self.uniform_edges and self.bins <= MAX_UINT8_BINS
        self.num_slots = self.bins + 2
        self.slot_dtype = slot_dtype(self.bins)
        self.last_edge = edges[-1]

    def slots(self, g: Tensor, out: Optional[Tensor] = None, above_one: bool = True,
              work: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Slots of gradient norms ``g >= 0`` (any floating dtype) in :attr:`slot_dtype`, equal
        to :func:`search_slots`. ``above_one=False`` promises g <= 1 (hard GHM-C targets): two
        ops less, and a NaN g then lands in some bin instead of slot ``bins + 1``. ``work``:
        see :func:`unit_interval_slots`."""
        if self.unit_edges and g.dtype == torch.float32 and g.device.type == 'cpu':
            slots = unit_interval_slots(g, self.bins, out, work)
            if above_one:  # beyond the last edge, or NaN: outside every bin, as the search
                slots.masked_fill_(torch.lt(g, self.last_edge).logical_not_(), self.bins + 1)
            return slots
        if not self.increasing_edges:  # mmdet's test can count an element twice, or never
            raise GHMArgumentError(
                f'edges: expected strictly increasing bin edges, got {self.edges.tolist()} '
                '(edited in place, or loaded from a checkpoint)')
        slots = search_slots(g, self.edges).to(self.slot_dtype)
        return slots if out is None else out.copy_(slots)
