"""Batch-wide GHM density (mmdet_ghm.models): one GHM call per iteration over all FPN levels.

The reference is built independently of the heads' recorder: a plain mmdet head whose loss
modules are wrapped to keep each per-level call's inputs, and a fresh GHM loss called once on the
concatenation of those inputs. Loss, gradient and EMA state must equal the batch-wide head's."""
import copy

import pytest
import torch
from torch import nn

import mmdet_ghm  # noqa: F401  (registers the losses and heads)
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

init_default_scope('mmdet')

GHMC_CFG = dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)
GHMR_CFG = dict(type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
IMG = 160
STRIDES = [8, 16, 32, 64]


def _retina_cfg(head_type, loss_cls=GHMC_CFG, loss_bbox=GHMR_CFG):
    return dict(
        type=head_type, num_classes=5, in_channels=16, feat_channels=16, stacked_convs=1,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=2, scales_per_octave=3,
                              ratios=[1.0], strides=STRIDES),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=loss_cls, loss_bbox=loss_bbox,
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     min_pos_iou=0, ignore_iof_thr=-1),
                       sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
                       debug=False))


def _atss_cfg(head_type, loss_bbox=dict(type='GIoULoss', loss_weight=2.0)):
    return dict(
        type=head_type, num_classes=5, in_channels=16, feat_channels=16, stacked_convs=1,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=8, scales_per_octave=1,
                              ratios=[1.0], strides=STRIDES),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
        loss_cls=GHMC_CFG, loss_bbox=loss_bbox,
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                       pos_weight=-1, debug=False))


def _inputs(head, batch=2, seed=0):
    """Head outputs for random features, and ground truth of a few boxes an image."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 16, IMG // s, IMG // s, generator=gen) for s in STRIDES]
    gts, metas = [], []
    for _ in range(batch):
        n = 4
        xy = torch.rand(n, 2, generator=gen) * 100
        wh = 12 + torch.rand(n, 2, generator=gen) * 44
        gts.append(InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                labels=torch.randint(0, 5, (n,), generator=gen)))
        metas.append(dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), scale_factor=(1., 1.)))
    outs = head(feats)
    return outs, gts, metas


class _KeepInputs(nn.Module):
    """Calls the wrapped loss and keeps the inputs of each call (the per-level reference)."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.calls = loss, []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.loss(*args, **kwargs)


def _pair(cfg_of):
    """A batch-wide head and a plain mmdet head with the same weights and fresh loss states."""
    batch = MODELS.build(cfg_of('BatchDensity' + cfg_of.head))
    plain = MODELS.build(cfg_of(cfg_of.head))
    plain.load_state_dict(batch.state_dict())
    return batch, plain


def _retina(head_type):
    return _retina_cfg(head_type)


_retina.head = 'RetinaHead'


def _atss(head_type):
    return _atss_cfg(head_type)


_atss.head = 'ATSSHead'


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize('cfg_of', [_retina, _atss], ids=['retina', 'atss'])
def test_equals_one_ghm_call_on_all_levels(cfg_of):
    batch, plain = _pair(cfg_of)
    names = ['loss_cls', 'loss_bbox'] if cfg_of is _retina else ['loss_cls']
    references = {n: copy.deepcopy(getattr(batch, n)) for n in names}  # fresh, as batch's
    for n in names:
        setattr(plain, n, _KeepInputs(getattr(plain, n)))

    for step in range(3):  # several iterations: the EMA carries over
        outs, gts, metas = _inputs(batch, seed=step)
        losses = batch.loss_by_feat(*outs, gts, metas)
        plain_outs = [[o.detach().requires_grad_() for o in level] for level in outs]
        for n in names:
            getattr(plain, n).calls.clear()
        plain_losses = plain.loss_by_feat(*plain_outs, gts, metas)
        assert isinstance(plain_losses['loss_cls'], list)  # the per-level default
        assert len(plain_losses['loss_cls']) == len(STRIDES)

        for n in names:
            calls = getattr(plain, n).calls
            assert len(calls) >= 2  # per level
            args = [torch.cat([c[0][i] for c in calls]) for i in range(3)]
            expected = references[n](*args, **calls[0][1])
            got = losses[n]
            assert isinstance(got, torch.Tensor) and got.dim() == 0
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            # gradient with respect to the head outputs, every level
            out = dict(loss_cls=0, loss_bbox=1)[n]  # cls_scores, bbox_preds
            grads = torch.autograd.grad(got, outs[out], retain_graph=True)
            ref_grads = torch.autograd.grad(expected, plain_outs[out], retain_graph=True)
            for g, r in zip(grads, ref_grads):
                torch.testing.assert_close(g, r, rtol=0, atol=0)
            ref_state, state = _state(references[n]), _state(getattr(batch, n))
            assert ref_state.keys() == state.keys() and ref_state
            for k in state:
                torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=0)
            # per level, the EMA moves once per level: not the batch-wide state
            per_level = _state(getattr(plain, n).loss)
            assert any(not torch.equal(per_level[k], state[k]) for k in state)
        # the other losses are mmdet's per-level ones, unchanged
        for n in set(losses) - set(names):
            assert isinstance(losses[n], list)
            for a, b in zip(losses[n], plain_losses[n]):
                torch.testing.assert_close(a, b)


def test_without_ghm_losses_the_head_is_mmdets():
    cfg = dict(loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                             loss_weight=1.0),
               loss_bbox=dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0))
    batch = MODELS.build(_retina_cfg('BatchDensityRetinaHead', **cfg))
    plain = MODELS.build(_retina_cfg('RetinaHead', **cfg))
    plain.load_state_dict(batch.state_dict())
    outs, gts, metas = _inputs(batch)
    a, b = batch.loss_by_feat(*outs, gts, metas), plain.loss_by_feat(*outs, gts, metas)
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(STRIDES)
        for x, y in zip(a[k], b[k]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_atss_refuses_a_ghm_box_loss():
    with pytest.raises(ValueError, match='cannot compute `loss_bbox` over the whole batch'):
        MODELS.build(_atss_cfg('BatchDensityATSSHead', loss_bbox=GHMR_CFG))


def test_merge_refuses_different_scalars():
    from mmdet_ghm.models.batch_density import merge_calls
    x = torch.zeros(2, 3)
    args, kwargs = merge_calls([((x, x), dict(avg_factor=4.0)), ((x, x), dict(avg_factor=4.0))])
    assert args[0].shape == (4, 3) and kwargs == dict(avg_factor=4.0)
    with pytest.raises(ValueError, match='`avg_factor` differs'):
        merge_calls([((x,), dict(avg_factor=4.0)), ((x,), dict(avg_factor=5.0))])


def test_config_line_with_custom_imports():
    """The one line a user adds to the embedded GHM config builds and trains a step."""
    import os.path as osp

    from mmengine.config import Config
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'regimes',
                                   'retinanet_r18-tiny_fpn_ghm-batch_shapes.py'))
    assert cfg.custom_imports.imports == ['mmdet_ghm']
    model = MODELS.build(cfg.model)
    assert type(model.bbox_head).__name__ == 'BatchDensityRetinaHead'
    inputs = torch.rand(2, 3, IMG, IMG) * 255
    from mmdet.structures import DetDataSample
    samples = []
    for i in range(2):
        s = DetDataSample(metainfo=dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG),
                                        scale_factor=(1., 1.), batch_input_shape=(IMG, IMG)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[10., 20., 50., 60.]]),
                                      labels=torch.tensor([i]))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=list(inputs.to(torch.uint8)),
                                        data_samples=samples), True)
    losses = model(**data, mode='loss')
    assert losses['loss_cls'].dim() == 0 and losses['loss_bbox'].dim() == 0
    (losses['loss_cls'] + losses['loss_bbox']).backward()
