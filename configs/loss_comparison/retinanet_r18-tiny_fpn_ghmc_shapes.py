# Loss comparison (tools/compare_losses.py): GHM-C alone, with the zoo's hyperparameters, and
# RetinaNet's smooth L1 (beta 0.11) for the boxes, as in the GHM paper's classification ablation.
_base_ = '../_base_/retinanet_r18-tiny_fpn_shapes.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=0.11, loss_weight=1.0)))
