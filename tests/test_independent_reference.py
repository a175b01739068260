"""The package against references that do not share its code.

- mmdet 3.3.0's own ``GHMC``/``GHMR`` on inputs placed ON bin edges and one float32 ulp either side,
  for bin counts where ``floor(g * bins)`` disagrees with mmdet's float32 edges (the Triton path, run
  by the interpreter, must still bin like mmdet).
- One process fed the union of the batches against 2 gloo processes with ``sync_across_ranks``, for
  every reduction ('sum' and 'none' depend on the global ``tot``; 'mean' hides it).
- A plain Python loop written from the paper's definition (and mmdet's semantics) of the density,
  the EMA and the per-bin weights, over successive calls.
- mmdet bit for bit (zero mismatches) on the CPU path at a size of several CPU chunks, with every
  element's logit one where PyTorch's scalar and vectorized sigmoids disagree.
"""
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GHMC, GHMR
from mmdet_ghm.ops import ghmc_loss, ghmr_loss

TOL = dict(rtol=1e-5, atol=1e-7)
interpreter_only = pytest.mark.skipif(
    os.environ.get('TRITON_INTERPRET') != '1',
    reason='the Triton path on CPU tensors needs TRITON_INTERPRET=1 (tests/conftest.py sets it)')


# ---------------------------------------------------------------------------------------------
# Values on bin edges
# ---------------------------------------------------------------------------------------------

def mmdet_edges(bins: int, last_edge: float) -> torch.Tensor:
    """mmdet's edges: float32 ``arange(bins + 1) / bins``, the last one replaced."""
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] = last_edge
    return edges


def edge_neighbourhood(bins: int) -> torch.Tensor:
    """Every inner float32 edge in [0, 1) and its two float32 neighbours."""
    inner = mmdet_edges(bins, 2.0)[:-1].numpy()
    values = np.concatenate([inner, np.nextafter(inner, np.float32(-1)),
                             np.nextafter(inner, np.float32(2))]).astype(np.float32)
    return torch.from_numpy(np.unique(values[(values >= 0) & (values < 1)]))


def floor_misses(g: torch.Tensor, bins: int) -> torch.Tensor:
    """Where the float32 ``floor(g * bins)`` is not the bin of mmdet's test on its edges."""
    by_edges = torch.bucketize(g, mmdet_edges(bins, 2.0), right=True) - 1
    by_floor = torch.floor(g * bins).clamp(0, bins - 1)  # float32 product, as a kernel forms it
    return by_floor.long() != by_edges


def bins_where_floor_misses(max_bins: int = 64):
    return [b for b in range(1, max_bins + 1) if floor_misses(edge_neighbourhood(b), b).any()]


def interpreter_regression_norm(d: torch.Tensor, mu: float) -> torch.Tensor:
    """GHM-R's gradient norm as the Triton interpreter evaluates it: float32 numpy, with an
    IEEE-rounded sqrt (PyTorch's CPU sqrt is not: it differs in the last bit for ~20% of inputs)."""
    d = d.numpy().astype(np.float32)
    root = np.sqrt(d * d + np.float32(mu * mu))
    return torch.from_numpy(np.abs(d / root).astype(np.float32))


def regression_diffs_for(g: torch.Tensor, mu: float) -> torch.Tensor:
    """float32 d >= 0 whose gradient norm is exactly g both as mmdet computes it,
    ``|d / sqrt(mu*mu + d*d)|`` in PyTorch, and as the interpreter does (the values of g no such d
    reaches are dropped); so only the binning itself can put them in another bin than mmdet's."""
    g64 = g.double()
    start = (mu * g64 / torch.sqrt(1 - g64 * g64)).float()
    bits = start.view(torch.int32)[:, None] + torch.arange(-256, 257, dtype=torch.int32)
    d = bits.view(torch.float32)
    ours = interpreter_regression_norm(d.reshape(-1), mu).view(d.shape)
    hit = (torch.abs(d / torch.sqrt(mu * mu + d * d)) == g[:, None]) & (ours == g[:, None])
    found = hit.any(1)
    return d[torch.arange(len(d)), hit.float().argmax(1)][found]


def interpreter_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``tl.sigmoid`` as the Triton interpreter evaluates it: float32 ``1 / (1 + exp(-x))``."""
    x = x.numpy().astype(np.float32)
    return torch.from_numpy((np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32))


def logits_for(g: torch.Tensor) -> torch.Tensor:
    """float32 logits x whose sigmoid is exactly g both in PyTorch (vectorized, as mmdet computes
    it on a tensor of a multiple of 64 elements) and in the interpreter's float32 formula; so only
    the binning itself can put them in another bin than mmdet's."""
    g64 = g.double().clamp(1e-30, 1 - 1e-7)
    start = torch.log(g64 / (1 - g64)).float()
    bits = start.view(torch.int32)[:, None] + torch.arange(-128, 128, dtype=torch.int32)
    x = bits.view(torch.float32)
    hit = (torch.sigmoid(x) == g[:, None]) & (interpreter_sigmoid(x) == g[:, None])
    found = hit.any(1)
    return x[torch.arange(len(x)), hit.float().argmax(1)][found]


def _run(loss_fn, pred, *args, **kwargs):
    pred = pred.clone().requires_grad_()
    value = loss_fn(pred, *args, **kwargs)
    (value.sum() if value.dim() else value).backward()
    return value.detach(), pred.grad


EDGE_BINS = [11, 29, 41]


def test_the_edge_bins_are_where_floor_misses():
    """The bin counts used below are ones where the float32 product disagrees with the edges (a
    test there can see a kernel that bins with floor(g * bins) alone)."""
    misses = bins_where_floor_misses()
    assert set(EDGE_BINS) <= set(misses)
    assert 10 not in misses and 30 not in misses  # mmdet's zoo config's bins hide it


@interpreter_only
@pytest.mark.parametrize('bins', EDGE_BINS)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_triton_ghmr_bins_values_on_edges_like_mmdet(bins, reduction):
    mu = 0.03  # with 0.02 no float32 d puts g on the one edge of 11 bins floor() misses
    d = regression_diffs_for(edge_neighbourhood(bins), mu)
    g = torch.abs(d / torch.sqrt(mu * mu + d * d))
    if not floor_misses(g, bins).any():
        pytest.skip('no float32 d on this machine puts g where floor(g * bins) misbins')
    ours = GHMR(mu=mu, bins=bins, momentum=0.7, loss_weight=2.0, reduction=reduction)
    ref = MMDetGHMR(mu=mu, bins=bins, momentum=0.7, loss_weight=2.0, reduction=reduction)
    gen = torch.Generator().manual_seed(bins)
    for step in range(2):
        # the edge values with both signs, among random ones; some ignored
        pred = torch.cat([d, -d, torch.randn(64, generator=gen) * 0.05])
        pred = pred[torch.randperm(pred.numel(), generator=gen)].view(-1, 1).repeat(1, 4)
        target = torch.zeros_like(pred)
        weight = (torch.rand(pred.shape, generator=gen) > 0.1).float()
        loss, grad = _run(lambda p: ghmr_loss(p, target, weight, ours.density, mu, 2.0, reduction,
                                              backend='triton'), pred)
        ref_loss, ref_grad = _run(ref, pred, target, weight)
        assert torch.equal(ours.density.acc_sum, ref.acc_sum), step
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)


@interpreter_only
@pytest.mark.parametrize('bins', EDGE_BINS)
@pytest.mark.parametrize('targets', ['labels', 'float'])
def test_triton_ghmc_bins_values_on_edges_like_mmdet(bins, targets):
    """Background elements (t = 0) with sigmoid(x) on an edge or next to one."""
    x = logits_for(edge_neighbourhood(bins))
    if not floor_misses(torch.sigmoid(x), bins).any():
        pytest.skip("no logit on this machine (PyTorch's and numpy's sigmoid agreeing) puts g "
                    'where floor(g * bins) misbins')
    C = 4
    ours, ref = GHMC(bins=bins, momentum=0.75), MMDetGHMC(bins=bins, momentum=0.75)
    gen = torch.Generator().manual_seed(bins)
    for step in range(2):
        values = torch.cat([x, torch.randn(3 * x.numel(), generator=gen) * 3])
        rows = -(-values.numel() // C)
        rows += -rows % 16  # a multiple of 64 elements: mmdet's sigmoid takes no scalar tail
        pred = torch.full((rows * C,), -30.0)
        pred[:values.numel()] = values[torch.randperm(values.numel(), generator=gen)]
        pred = pred.view(rows, C)
        # the edge logits are background; a few positives elsewhere, on rows of random logits
        labels = torch.full((rows,), C)
        onehot = torch.zeros(rows, C)
        is_edge = torch.isin(pred, x).any(1)
        positive = (~is_edge) & (torch.rand(rows, generator=gen) < 0.3)
        labels[positive] = torch.randint(0, C, (int(positive.sum()),), generator=gen)
        onehot[positive, labels[positive]] = 1.0
        weight = (torch.rand(rows, generator=gen) > 0.1).float()
        lab, tgt, w = ((labels, None, weight) if targets == 'labels'
                       else (None, onehot, weight[:, None].expand(rows, C).contiguous()))
        loss, grad = _run(lambda p: ghmc_loss(p, lab, tgt, w, ours.density, 1.0, 'mean',
                                              backend='triton'), pred)
        ref_loss, ref_grad = _run(ref, pred, onehot, weight[:, None].expand(rows, C))
        assert torch.equal(ours.density.acc_sum, ref.acc_sum), step
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)


# ---------------------------------------------------------------------------------------------
# sync_across_ranks: 2 processes against one process on the union of the batches
# ---------------------------------------------------------------------------------------------

WORLD, STEPS, ROWS, REG_ROWS = 2, 3, 203, 41
REDUCTIONS = ('sum', 'none', 'mean')


def _batch(step):
    gen = torch.Generator().manual_seed(1000 + step)
    n, m = WORLD * ROWS, WORLD * REG_ROWS
    return dict(pred=torch.randn(n, 7, generator=gen) * 3 - 1,
                labels=torch.randint(0, 8, (n,), generator=gen),
                weight=(torch.rand(n, generator=gen) > 0.15).float(),
                reg=torch.randn(m, 4, generator=gen) * 0.05,
                reg_target=torch.randn(m, 4, generator=gen) * 0.05,
                reg_weight=(torch.rand(m, 4, generator=gen) > 0.4).float() * 1.5)


def _rank_rows(batch, rank):
    rows, reg_rows = slice(rank * ROWS, (rank + 1) * ROWS), slice(rank * REG_ROWS,
                                                                   (rank + 1) * REG_ROWS)
    return {k: v[reg_rows if k.startswith('reg') else rows] for k, v in batch.items()}


def _losses(sync):
    return {r: (GHMC(bins=30, momentum=0.75, reduction=r, sync_across_ranks=sync),
                GHMR(mu=0.02, bins=10, momentum=0.7, reduction=r, sync_across_ranks=sync))
            for r in REDUCTIONS}


def _step(losses, b):
    out = {}
    for r, (ghmc, ghmr) in losses.items():
        lc, gc = _run(ghmc, b['pred'], b['labels'], b['weight'])
        lr, gr = _run(ghmr, b['reg'], b['reg_target'], b['reg_weight'])
        out[r] = (lc, gc, lr, gr)
    return out


def _sync_worker(rank, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        losses = _losses(sync=True)
        results = [_step(losses, _rank_rows(_batch(s), rank)) for s in range(STEPS)]
        state = {r: (c.density.acc_sum.clone(), g.density.acc_sum.clone())
                 for r, (c, g) in losses.items()}
        torch.save({'results': results, 'state': state}, os.path.join(out_dir, f'{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def synced_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sync')
    mp.spawn(_sync_worker, args=(str(tmp / 'init'), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f'{r}.pt', weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize('reduction', REDUCTIONS)
def test_synced_ranks_equal_one_process_on_the_union(synced_ranks, reduction):
    """With the global density and tot, each rank's elements get the union's weights: the
    element-wise losses and the gradients of 'none' and 'sum' are the union's rows, the ranks'
    sums add up to the union's sum; 'mean' divides by the mean tot over the ranks, so the mean of
    the ranks' losses is the union's and each rank's gradient is WORLD times the union's rows."""
    union = _losses(sync=False)
    for step in range(STEPS):
        expected = _step(union, _batch(step))[reduction]
        per_rank = [r['results'][step][reduction] for r in synced_ranks]
        for i in (0, 2):  # GHM-C, GHM-R losses
            if reduction == 'none':
                got = torch.cat([r[i] for r in per_rank])
            elif reduction == 'sum':
                got = sum(r[i] for r in per_rank)
            else:
                got = sum(r[i] for r in per_rank) / WORLD
            torch.testing.assert_close(got, expected[i], rtol=1e-5, atol=1e-7)
        for i in (1, 3):  # gradients
            got = torch.cat([r[i] for r in per_rank])
            if reduction == 'mean':
                got = got / WORLD
            torch.testing.assert_close(got, expected[i], rtol=1e-5, atol=1e-9)
    for r in synced_ranks:
        assert torch.equal(r['state'][reduction][0], union[reduction][0].density.acc_sum)
        assert torch.equal(r['state'][reduction][1], union[reduction][1].density.acc_sum)


# ---------------------------------------------------------------------------------------------
# A loop written from the paper
# ---------------------------------------------------------------------------------------------

class LoopGHM:
    """GHM's density and weights, element by element in Python floats (float64), from the
    paper's definition with mmdet's choices (GHM_NOTES.md sections 1-2):

    - bin i holds g with ``edges[i] <= g < edges[i + 1]`` (mmdet's float32 edges);
    - with momentum m, each bin non-empty in this call gets ``acc = m * acc + (1 - m) * count``
      (empty bins keep theirs); without, the density is this call's count;
    - optionally (not in the paper: this package's ``bias_correction``) the EMA is divided by
      ``1 - m ** k``, k the number of updates of that bin so far;
    - an element of bin i weighs ``tot / density[i] / n``, n = the number of non-empty bins in
      this call; invalid elements weigh 0.
    """

    def __init__(self, bins, momentum, last_edge, bias_correction=False):
        self.edges = [float(e) for e in mmdet_edges(bins, last_edge)]
        self.bins, self.momentum, self.bias_correction = bins, momentum, bias_correction
        self.acc = [0.0] * bins
        self.updates = [0] * bins

    def bin_of(self, g):
        for i in range(self.bins):
            if self.edges[i] <= g < self.edges[i + 1]:
                return i
        return None

    def weights(self, g, valid, tot):
        bins = [self.bin_of(v) if ok else None for v, ok in zip(g, valid)]
        counts = [0] * self.bins
        for b in bins:
            if b is not None:
                counts[b] += 1
        n = sum(1 for c in counts if c > 0)
        per_bin = [0.0] * self.bins
        for i, c in enumerate(counts):
            if c == 0:
                continue
            if self.momentum > 0:
                self.acc[i] = self.momentum * self.acc[i] + (1 - self.momentum) * c
                self.updates[i] += 1
                density = self.acc[i]
                if self.bias_correction:
                    density /= 1 - self.momentum ** self.updates[i]
            else:
                density = c
            per_bin[i] = tot / density / n
        return [0.0 if b is None else per_bin[b] for b in bins]


def _bce(x, t):
    """BCE with logits in float64: max(x, 0) - x * t + log(1 + exp(-|x|))."""
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@pytest.mark.parametrize('momentum', [0.0, 0.6])
@pytest.mark.parametrize('bias_correction', [False, True])
def test_ghmc_weights_equal_a_loop_over_elements(momentum, bias_correction):
    bins, loss_weight = 7, 1.5
    ours = GHMC(bins, momentum, loss_weight=loss_weight, bias_correction=bias_correction)
    twin = GHMC(bins, momentum, loss_weight=loss_weight, reduction='none',
                bias_correction=bias_correction)
    loop = LoopGHM(bins, momentum, float(mmdet_edges(bins, 1.0 + 1e-6)[-1]), bias_correction)
    gen = torch.Generator().manual_seed(7)
    for step in range(6):
        n, c = [(40, 5), (23, 5), (2, 2), (40, 5), (1, 3), (23, 5)][step]  # some with empty bins
        pred = torch.randn(n, c, generator=gen) * 2.5
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        weight = (torch.rand(n, generator=gen) > 0.25).float()
        t = [[1.0 if labels[i] == j else 0.0 for j in range(c)] for i in range(n)]
        # g as mmdet forms it (float32 sigmoid), so that only the formula is under test
        g = torch.abs(torch.sigmoid(pred) - torch.tensor(t)).view(-1).tolist()
        valid = [bool(weight[i] > 0) for i in range(n) for _ in range(c)]
        tot = max(sum(valid), 1)
        w = loop.weights(g, valid, tot)
        xs, ts = pred.view(-1).tolist(), sum(t, [])
        expected_none = [_bce(x, y) * wi * loss_weight for x, y, wi in zip(xs, ts, w)]
        expected_mean = sum(expected_none) / tot
        expected_grad = [(_sigmoid(x) - y) * wi * loss_weight / tot
                         for x, y, wi in zip(xs, ts, w)]
        loss, grad = _run(ours, pred, labels, weight)
        with torch.no_grad():
            none = twin(pred, labels, weight)
        torch.testing.assert_close(loss.double(), torch.tensor(expected_mean, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-9)
        # float32 BCE-with-logits (PyTorch's, mmdet's) is x - log_sigmoid(x) for a negative: up
        # to ~2 ulp of |x| off where the loss is small
        slack = torch.tensor([2.4e-7 * abs(x) * wi * loss_weight for x, wi in zip(xs, w)],
                             dtype=torch.float64)
        error = (none.double().view(-1) - torch.tensor(expected_none, dtype=torch.float64)).abs()
        assert (error <= 1e-5 * torch.tensor(expected_none, dtype=torch.float64).abs()
                + slack + 1e-12).all(), float(error.max())
        torch.testing.assert_close(grad.double().view(-1), torch.tensor(expected_grad, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-9)
        if momentum > 0:
            torch.testing.assert_close(ours.density.acc_sum.double(),
                                       torch.tensor(loop.acc, dtype=torch.float64),
                                       rtol=1e-6, atol=0)


@pytest.mark.parametrize('momentum', [0.0, 0.7])
def test_ghmr_weights_equal_a_loop_over_elements(momentum):
    bins, mu, loss_weight = 6, 0.02, 3.0
    ours = GHMR(mu, bins, momentum, loss_weight=loss_weight)
    loop = LoopGHM(bins, momentum, 1e3)
    gen = torch.Generator().manual_seed(11)
    for step in range(6):
        n = [18, 31, 2, 18, 1, 31][step]  # some with empty bins
        pred = torch.randn(n, 4, generator=gen) * 0.05
        target = torch.randn(n, 4, generator=gen) * 0.05
        weight = (torch.rand(n, 4, generator=gen) > 0.3).float() * 0.5  # tot = SUM of weights
        diff = pred - target
        g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).view(-1).tolist()
        valid = (weight > 0).view(-1).tolist()
        tot = max(float(weight.double().sum()), 1.0)
        w = loop.weights(g, valid, tot)
        ds = diff.view(-1).double().tolist()
        expected = sum((math.sqrt(d * d + mu * mu) - mu) * wi for d, wi in zip(ds, w)) \
            / tot * loss_weight
        expected_grad = [d / math.sqrt(d * d + mu * mu) * wi * loss_weight / tot
                         for d, wi in zip(ds, w)]
        loss, grad = _run(ours, pred, target, weight)
        torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(grad.double().view(-1), torch.tensor(expected_grad, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-9)
        if momentum > 0:
            torch.testing.assert_close(ours.density.acc_sum.double(),
                                       torch.tensor(loop.acc, dtype=torch.float64),
                                       rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# CPU path: mmdet bit for bit at scale, every logit one the sigmoid's code paths round apart
# ---------------------------------------------------------------------------------------------

def logits_rounded_apart(bins: int, per_edge: int = 64) -> torch.Tensor:
    """Logits near each edge's logit where PyTorch's vectorized sigmoid (mmdet's, on a whole
    tensor of a multiple of 64 elements) and its scalar tail loop give different bits, first those
    whose two sigmoids even fall in different bins."""
    edges = mmdet_edges(bins, 1.0 + 1e-6)[1:-1].double()
    start = torch.log(edges / (1 - edges)).float()
    bits = start.view(torch.int32)[:, None] + torch.arange(-4096, 4096, dtype=torch.int32)
    x = bits.view(torch.float32).reshape(-1)
    vectorized = torch.sigmoid(x)
    # a strided input takes the scalar loop, as the tail of a vectorized one does
    scalar = torch.sigmoid(torch.stack([x, x], 1).view(-1)[::2])
    apart = vectorized != scalar
    edges32 = mmdet_edges(bins, 1.0 + 1e-6)
    other_bin = torch.bucketize(vectorized, edges32, right=True) != torch.bucketize(
        scalar, edges32, right=True)
    chosen = torch.cat([x[other_bin], x[apart & ~other_bin]])
    return chosen[:per_edge * (bins - 1)]


@pytest.fixture(scope='module')
def rounded_apart_30():
    return logits_rounded_apart(30)


@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('classes', [79, 80])
def test_cpu_ghmc_equals_mmdet_bit_for_bit_over_chunks(rounded_apart_30, threads, classes):
    """About 3 MB of logits (several CPU chunks), each one of the logits whose sigmoid depends on
    the code path that computes it, a multiple of 64 elements: mmdet, single-threaded, takes the
    vectorized sigmoid for all of them. Ours, with 1 or 2 threads, must give the same gradient and
    state to the bit (no tolerance, no count of allowed mismatches)."""
    x = rounded_apart_30
    if x.numel() < 1000:
        pytest.skip("this CPU's scalar and vectorized sigmoids (nearly) agree: nothing to see")
    rows = 64 * 160
    gen = torch.Generator().manual_seed(classes)
    pred = x[torch.randint(0, x.numel(), (rows, classes), generator=gen)]
    labels = torch.full((rows,), classes)  # background: g = sigmoid(x) for every element
    positive = torch.rand(rows, generator=gen) < 0.02
    labels[positive] = torch.randint(0, classes, (int(positive.sum()),), generator=gen)
    weight = (torch.rand(rows, generator=gen) > 0.05).float()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = MMDetGHMC(bins=30, momentum=0.75)
        ref_results = [_run(ref, pred, labels, weight) for _ in range(2)]
        torch.set_num_threads(threads)
        ours = GHMC(bins=30, momentum=0.75)
        results = [_run(ours, pred, labels, weight) for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(ours.density.acc_sum, ref.acc_sum)
    for (loss, grad), (ref_loss, ref_grad) in zip(results, ref_results):
        mismatches = int((grad != ref_grad).sum())
        assert mismatches == 0, f'{mismatches} gradient elements differ from mmdet'
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
