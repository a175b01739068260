"""Checkpoints move both ways between this package and plain mmdet 3.3.0 without losing the EMA.

Our state-dict keys are mmdet's (``<loss>.edges``, ``<loss>.acc_sum``) plus ``<loss>.num_updates``,
so plain mmdet, which MMEngine loads with strict=False, reads the density from our checkpoints;
ours read mmdet's, and the nested layout ``<loss>.density.*`` that earlier versions of this package
wrote (tests/data/ghm_state_density_layout.pth, written by them) still loads.
"""
import os.path as osp

import pytest
import torch
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR
from mmengine.runner.checkpoint import load_checkpoint, save_checkpoint

from mmdet_ghm import GHMC, GHMR

DATA = osp.join(osp.dirname(osp.abspath(__file__)), 'data')
OLD_LAYOUT = osp.join(DATA, 'ghm_state_density_layout.pth')


def _head(cls_loss, reg_loss):
    """The losses where a detector holds them: bbox_head.loss_cls / bbox_head.loss_bbox."""
    model = torch.nn.Module()
    model.bbox_head = torch.nn.Module()
    model.bbox_head.loss_cls, model.bbox_head.loss_bbox = cls_loss, reg_loss
    return model


def _ours(momentum_cls=0.75, momentum_reg=0.7):
    return _head(GHMC(bins=30, momentum=momentum_cls), GHMR(bins=10, momentum=momentum_reg))


def _mmdet(momentum_cls=0.75, momentum_reg=0.7):
    return _head(MMDetGHMC(bins=30, momentum=momentum_cls),
                 MMDetGHMR(bins=10, momentum=momentum_reg))


def _train(model, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    head = model.bbox_head
    for _ in range(steps):
        pred = torch.randn(60, 5, generator=gen) * 3
        labels = torch.randint(0, 6, (60,), generator=gen)
        head.loss_cls(pred, labels, torch.ones(60))
        reg = torch.randn(40, 4, generator=gen) * 0.1
        head.loss_bbox(reg, torch.zeros(40, 4), torch.ones(40, 4))


def _next_losses(model, seed=99):
    gen = torch.Generator().manual_seed(seed)
    head = model.bbox_head
    pred = torch.randn(60, 5, generator=gen) * 3
    labels = torch.randint(0, 6, (60,), generator=gen)
    reg = torch.randn(40, 4, generator=gen) * 0.1
    return (head.loss_cls(pred, labels, torch.ones(60)),
            head.loss_bbox(reg, torch.zeros(40, 4), torch.ones(40, 4)))


def _assert_same_state(ours, ref):
    for name in ('loss_cls', 'loss_bbox'):
        a, b = getattr(ours.bbox_head, name), getattr(ref.bbox_head, name)
        assert torch.equal(a.edges, b.edges), name
        if hasattr(b, 'acc_sum'):
            assert torch.equal(a.acc_sum, b.acc_sum), name


def test_our_keys_are_mmdets_keys_plus_num_updates():
    keys = set(_ours().state_dict())
    ref_keys = set(_mmdet().state_dict())
    assert ref_keys <= keys
    assert keys - ref_keys == {'bbox_head.loss_cls.num_updates',
                               'bbox_head.loss_bbox.num_updates'}
    assert set(_ours(0.0, 0.0).state_dict()) == keys  # keys never depend on the momentum


def test_plain_mmdet_loads_our_checkpoint_through_mmengine_with_the_ema(tmp_path):
    ours = _ours()
    _train(ours)
    path = str(tmp_path / 'ours.pth')
    save_checkpoint({'state_dict': ours.state_dict()}, path)
    ref = _mmdet()
    load_checkpoint(ref, path, map_location='cpu', strict=False)
    assert ref.bbox_head.loss_cls.acc_sum.any() and ref.bbox_head.loss_bbox.acc_sum.any()
    _assert_same_state(ours, ref)
    for a, b in zip(_next_losses(ours), _next_losses(ref)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)
    _assert_same_state(ours, ref)


def test_plain_mmdet_without_momentum_loads_our_checkpoint(tmp_path):
    ours = _ours(0.0, 0.0)
    _train(ours)
    path = str(tmp_path / 'ours.pth')
    save_checkpoint({'state_dict': ours.state_dict()}, path)
    ref = _mmdet(0.0, 0.0)
    load_checkpoint(ref, path, map_location='cpu', strict=False)  # acc_sum: unexpected there
    _assert_same_state(ours, ref)


@pytest.mark.parametrize('momentum', [0.0, 0.75])
def test_ours_loads_an_mmdet_checkpoint_through_mmengine(tmp_path, momentum):
    ref = _mmdet(momentum, momentum)
    _train(ref)
    path = str(tmp_path / 'mmdet.pth')
    save_checkpoint({'state_dict': ref.state_dict()}, path)
    ours = _ours(momentum, momentum)
    load_checkpoint(ours, path, map_location='cpu', strict=True)
    _assert_same_state(ours, ref)
    if momentum:
        assert ours.bbox_head.loss_cls.acc_sum.any()
    for a, b in zip(_next_losses(ours), _next_losses(ref)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)
    _assert_same_state(ours, ref)


def test_round_trip_keeps_every_buffer(tmp_path):
    ours = GHMC(bins=30, momentum=0.75, bias_correction=True)
    _train(_head(ours, GHMR()))
    path = tmp_path / 'ghmc.pth'
    torch.save(ours.state_dict(), path)
    restored = GHMC(bins=30, momentum=0.75, bias_correction=True)
    result = restored.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in ours.density.state_dict().items():
        assert torch.equal(getattr(restored.density, name), value), name
    with pytest.raises(RuntimeError, match='size mismatch'):
        GHMC(bins=10).load_state_dict(ours.state_dict())


def test_checkpoint_of_the_nested_layout_still_loads():
    """A state dict written by this package before the keys were flattened
    (``<loss>.density.edges/acc_sum/num_updates``) loads strictly, and the loss continues from it
    as plain mmdet continues from the same EMA state."""
    old = torch.load(OLD_LAYOUT, weights_only=True)
    assert 'bbox_head.loss_cls.density.acc_sum' in old and old[
        'bbox_head.loss_cls.density.acc_sum'].any()
    ours = _ours()
    result = ours.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name in ('loss_cls', 'loss_bbox'):
        for key in ('edges', 'acc_sum', 'num_updates'):
            assert torch.equal(getattr(ours.bbox_head, name).density.state_dict()[key],
                               old[f'bbox_head.{name}.density.{key}'])
    ref = _mmdet()
    for name in ('loss_cls', 'loss_bbox'):
        getattr(ref.bbox_head, name).acc_sum.copy_(old[f'bbox_head.{name}.density.acc_sum'])
    for a, b in zip(_next_losses(ours), _next_losses(ref)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)
    _assert_same_state(ours, ref)
