# Baseline for the main job: the same tiny RetinaNet, data and schedule with RetinaNet's losses,
# focal loss + smooth L1 (beta 0.11, as in the GHM paper's RetinaNet baseline).
_base_ = './_base_/retinanet_r18-tiny_fpn_shapes.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=0.11, loss_weight=1.0)))
