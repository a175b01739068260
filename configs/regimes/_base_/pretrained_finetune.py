# Issue 9, pretrained regime: fine-tuning recipe shared by configs/regimes/*-pretrained_shapes.py.
# The tiny RetinaNet starts from the backbone + neck of tools/pretrain_backbone.py (the head is new)
# and follows the paper's recipe (mmdet 1x) scaled to 12 epochs of 125 iterations: SGD, momentum
# 0.9, lr 0.01 at batch 16, weight decay 1e-4, linear warm-up, x0.1 at epochs 8 and 11, gradient
# clipping at norm 35.
_base_ = '../../_base_/retinanet_r18-tiny_fpn_shapes.py'

load_from = 'data/pretrained/r18-tiny_fpn_shapes_backbone-neck.pth'
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
