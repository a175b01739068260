"""Binning (mmdet_ghm.binning) and GradientDensity: exact bins, EMA and weights, state, bad
arguments."""
import numpy as np
import pytest
import torch

from mmdet_ghm import GradientDensity
from mmdet_ghm.binning import Binning, search_slots, unit_interval_slots


def _reference_slots(g, edges):
    """mmdet's test, edges[i] <= g < edges[i + 1], one bin at a time."""
    bins = edges.numel() - 1
    slots = torch.full(g.shape, bins + 1, dtype=torch.int64)
    for i in range(bins):
        slots[(g >= edges[i]) & (g < edges[i + 1])] = i + 1
    return slots


def _values_near_edges(edges, ulps=3):
    vals = []
    for e in edges.tolist():
        v = np.float32(e)
        for _ in range(ulps):
            v = np.nextafter(v, np.float32(-1))
        for _ in range(2 * ulps + 1):
            vals.append(v)
            v = np.nextafter(v, np.float32(2))
    g = torch.tensor(np.array(vals, dtype=np.float32))
    return g[(g >= 0) & (g <= 1)]


@pytest.mark.parametrize('bins', list(range(1, 65)) + [100, 127, 255])
@pytest.mark.parametrize('last_edge', [1.0 + 1e-6, 1e3])
def test_search_slots_match_mmdet_edges_bit_for_bit(bins, last_edge):
    density = GradientDensity(bins, last_edge=last_edge)
    g = torch.cat([_values_near_edges(density.edges), torch.rand(2000),
                   torch.tensor([0.0, -0.0, 1.0, 1.5, 1e3, 2e3, float('inf'), float('nan')])])
    reference = _reference_slots(g, density.edges)
    assert torch.equal(search_slots(g, density.edges), reference)
    assert torch.equal(density.slot_index(g).long(), reference)
    # float64 g (a model.double()): compared with the float32 edges after promotion, as mmdet
    g64 = g.double() + torch.where(g < 1, 1e-12, 0.0)
    assert torch.equal(density.slot_index(g64).long(), _reference_slots(g64, density.edges))


@pytest.mark.parametrize('bins', list(range(1, 65)) + [100, 127, 200, 253])
@pytest.mark.parametrize('last_edge', [1.0 + 1e-6, 1e3])
def test_unit_interval_slots_match_mmdet_edges_bit_for_bit(bins, last_edge):
    """The search-free binning of g in [0, 1] (the CPU passes): every float within 1000
    ulps of every edge and of 1, and random values."""
    density = GradientDensity(bins, last_edge=last_edge)
    assert density.binning.unit_edges
    bits = density.edges[:-1].view(torch.int32).long()[:, None] + torch.arange(-1000, 1001)
    bits = torch.cat([bits.view(-1), 0x3F800000 + torch.arange(-1000, 1)])
    g = bits[(bits >= 0) & (bits <= 0x3F800000)].to(torch.int32).view(torch.float32)
    g = torch.cat([g, torch.rand(20000), torch.tensor([0.0, -0.0, 1.0])])
    reference = _reference_slots(g, density.edges)
    slots = unit_interval_slots(g, bins)
    assert slots.dtype == torch.uint8 and torch.equal(slots.long(), reference)
    out = torch.empty(g.shape, dtype=torch.uint8)
    assert density.binning.slots(g, out=out) is out and torch.equal(out, slots)


def test_binning_beyond_one_and_nan():
    """g above the last edge (a soft target outside [0, 1]) leaves every bin (slot bins + 1), as
    in mmdet; g in [1, 1 + 1e-6) is the last bin; NaN never lands in slot 0 (the invalid one)."""
    binning = GradientDensity(10).binning
    g = torch.tensor([1.0, 1.0000005, 1.0000011, 1.5, 7.0, 300.0, float('inf')])
    assert binning.slots(g).tolist() == [10, 10, 11, 11, 11, 11, 11]
    assert torch.equal(binning.slots(g).long(), _reference_slots(g, binning.edges))
    assert 1 <= int(unit_interval_slots(torch.tensor([float('nan')]), 10)) <= 10


def test_unit_interval_slots_only_for_mmdet_edges():
    binning = GradientDensity(254).binning
    assert binning.uniform_edges and not binning.unit_edges  # no uint8 slots
    density = GradientDensity(10)
    edges = density.edges.clone()
    edges[3] += 0.01  # edges that are not i / bins (a hand-edited checkpoint)
    density.load_state_dict({'edges': edges, 'acc_sum': density.acc_sum,
                             'num_updates': density.num_updates})
    assert not density.binning.unit_edges
    g = torch.tensor([0.3, 0.305, 0.31, 0.5])
    assert torch.equal(density.slot_index(g).long(), _reference_slots(g, density.edges))
    assert isinstance(density.binning, Binning)


def test_slot_index_invalid_elements_go_to_slot_zero():
    g = torch.rand(6, 5)
    valid = torch.rand(6, 1) > 0.5
    slots = GradientDensity(10).slot_index(g, valid)
    assert slots.dtype == torch.uint8
    assert (slots[~valid.expand_as(g)] == 0).all()
    assert (slots[valid.expand_as(g)] > 0).all()


def _reference_weights(g, valid, tot, acc, bins, momentum, edges):
    """mmdet's loop, on float32 like mmdet."""
    weights = torch.zeros_like(g)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num = inds.sum().item()
        if num > 0:
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * num
                weights[inds] = tot / acc[i]
            else:
                weights[inds] = tot / num
            n += 1
    if n > 0:
        weights = weights / n
    return weights


@pytest.mark.parametrize('bins', [1, 7, 10, 30, 64])
@pytest.mark.parametrize('momentum', [0.0, 0.7, 0.75])
def test_forward_matches_mmdet_loop_over_calls(bins, momentum):
    density = GradientDensity(bins, momentum)
    acc = torch.zeros(bins)
    for _ in range(12):
        g = torch.rand(40, 7) ** 3
        valid = torch.rand(40, 7) > 0.2
        tot = max(valid.float().sum().item(), 1.0)
        ref = _reference_weights(g, valid, tot, acc, bins, momentum, density.edges)
        ours = density(g, valid)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, ref)
        assert torch.equal(density.acc_sum, acc)


def test_empty_and_all_invalid_keep_state_and_give_zero_weights():
    density = GradientDensity(10, 0.75)
    density(torch.rand(100))
    state = density.acc_sum.clone()
    assert density(torch.rand(0)).numel() == 0
    w = density(torch.rand(50), torch.zeros(50, dtype=torch.bool))
    assert torch.equal(w, torch.zeros(50))
    assert torch.equal(density.acc_sum, state)


def test_state_is_persistent_whatever_the_momentum():
    for momentum in (0.0, 0.75):
        keys = set(GradientDensity(10, momentum).state_dict())
        assert keys == {'edges', 'acc_sum', 'num_updates'}


@pytest.mark.parametrize('bins', [0, -1, 2.5, True, '10'])
def test_bad_bins(bins):
    with pytest.raises(ValueError, match='bins'):
        GradientDensity(bins)


@pytest.mark.parametrize('momentum', [-0.1, 1.0, 1.5, 'x', None])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match='momentum'):
        GradientDensity(10, momentum)


def test_bad_g():
    density = GradientDensity(10)
    with pytest.raises(ValueError, match='g must'):
        density(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match='valid'):
        density(torch.rand(3), torch.ones(4, dtype=torch.bool))


def test_recording_sums_the_counts_of_the_calls_it_spans():
    density = GradientDensity(10, 0.75)
    g1, g2 = torch.rand(50), torch.rand(30)
    density(g1)
    density.start_recording()
    density(g1)
    density(g2)
    recorded = density.stop_recording()
    expected = density.count(density.slot_index(torch.cat([g1, g2])))
    assert torch.equal(recorded, expected)
    assert density.stop_recording() is None
    density(g2)  # not recording: nothing kept
    assert density._recorded is None
    weights = density.slot_weights(recorded)
    assert weights.shape == (10,) and (weights >= 0).all() and weights.max() > 0


@pytest.mark.parametrize('bins', [1, 30, 62, 63, 200])
def test_count_equals_bincount(bins):
    """The CPU count of uint8 slots spreads the increments over histogram copies (up to 62 bins):
    the same counts and loss sums as a plain bincount, for any length and a dominant slot."""
    from mmdet_ghm.ops.cpu_passes import count_slots
    for n in (0, 1, 7, 1001):
        slots = torch.randint(0, bins + 2, (n,))
        slots[: n // 2] = 1  # most elements in one slot, as the easy negatives
        loss = torch.rand(n)
        expected = torch.bincount(slots, minlength=bins + 2)
        expected_sums = torch.bincount(slots, weights=loss.double(), minlength=bins + 2)
        for dtype in (torch.uint8, torch.int64):
            if dtype == torch.uint8 and bins + 2 > 255:
                continue
            counts, sums = count_slots(slots.to(dtype), bins + 2, loss)
            assert torch.equal(counts, expected)
            torch.testing.assert_close(sums, expected_sums, rtol=1e-15, atol=0)


def test_bias_correction_is_exact_near_momentum_one():
    """The correction 1 - m ** k in float64: in float32, m = 0.999 and k = 1 is off by 0.1% and
    m = 1 - 1e-7 by up to 20% (m itself rounds)."""
    for momentum in (0.999, 1 - 1e-7):
        d = GradientDensity(4, momentum, bias_correction=True)
        g = torch.full((1000,), 0.1)
        for k in range(1, 4):
            w = d(g)
            # EMA of a constant count, corrected: exactly the count; weight tot / count / n = 1
            torch.testing.assert_close(w, torch.ones(1000), rtol=1e-6, atol=0)


def test_module_casts_keep_the_state_float32():
    d = GradientDensity(30, 0.75)
    d(torch.rand(100))
    state = {k: v.clone() for k, v in d.state_dict().items()}
    for cast in (torch.nn.Module.half, torch.nn.Module.bfloat16, torch.nn.Module.double):
        cast(d)
        for key, value in d.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, state[key]), key
