# RetinaNet R101-FPN with GHM-C / GHM-R, COCO 1x (mmdet zoo: box AP 39.1).
_base_ = './retinanet_r50_fpn_ghm.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
