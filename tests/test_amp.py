"""Mixed precision: the embedded-dataset RetinaNet trained under bf16 autocast on CPU gives finite
losses, and every GHM-C call equals the float32 computation on the same logits.

mmengine 0.10.7's AmpOptimWrapper asserts a CUDA (or NPU/MLU) device, so on CPU the test drives
mmengine's own ``autocast(device_type='cpu', dtype=torch.bfloat16)`` around the train step; the
fp16 AmpOptimWrapper path needs a GPU."""
import copy
import math
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner.amp import autocast

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_bf16_autocast_training_is_finite_and_matches_float32_density():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(0)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py'))
    init_default_scope('mmdet')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    model = MODELS.build(model_cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loss_cls = model.bbox_head.loss_cls
    calls = []

    def before(module, args):
        calls.append({'state': copy.deepcopy(module.density.state_dict())})

    def after(module, args, output):
        pred, labels, weight = args[:3]
        calls[-1].update(pred=pred.detach(), labels=labels, weight=weight, loss=output.detach())

    loss_cls.register_forward_pre_hook(before)
    loss_cls.register_forward_hook(after)
    model.train()
    for step in range(3):
        data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128), (3, 128, 128)],
                              num_items=[3, 2], num_classes=model.bbox_head.num_classes)
        with autocast(device_type='cpu', dtype=torch.bfloat16):
            log_vars = model.train_step(data, optim_wrapper)
        assert all(math.isfinite(float(v)) for k, v in log_vars.items() if 'loss' in k), log_vars
    assert calls and any(c['pred'].dtype == torch.bfloat16 for c in calls)
    for call in calls:
        reference = type(loss_cls)(bins=loss_cls.bins, momentum=loss_cls.momentum,
                                   loss_weight=loss_cls.loss_weight)
        reference.density.load_state_dict(call['state'])
        expected = reference(call['pred'].float(), call['labels'], call['weight'])
        assert call['loss'].dtype == torch.float32
        assert torch.equal(call['loss'], expected)
