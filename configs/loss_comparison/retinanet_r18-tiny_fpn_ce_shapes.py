# Loss comparison (tools/compare_losses.py), the GHM paper's CE baseline: the tiny RetinaNet of the
# shapes configs with sigmoid binary cross entropy over all anchors (no reweighting) + smooth L1.
# Like every RetinaNet loss in mmdet it is divided by the number of positive anchors.
_base_ = '../_base_/retinanet_r18-tiny_fpn_shapes.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(_delete_=True, type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=0.11, loss_weight=1.0)))
