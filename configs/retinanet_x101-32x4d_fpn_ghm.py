# RetinaNet X101-32x4d-FPN with GHM-C / GHM-R, COCO 1x (mmdet zoo: box AP 40.7).
_base_ = './retinanet_r50_fpn_ghm.py'
model = dict(
    backbone=dict(
        type='ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
