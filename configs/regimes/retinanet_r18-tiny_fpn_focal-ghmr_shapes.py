# Issue 9, E2 (box noise): focal loss for classification and GHM-R (the zoo's mu 0.02, bins 10,
# momentum 0.7, loss weight 10) for the boxes; its smooth-L1 twin is
# configs/retinanet_r18-tiny_fpn_focal_shapes.py.
_base_ = '../retinanet_r18-tiny_fpn_focal_shapes.py'

model = dict(
    bbox_head=dict(
        loss_bbox=dict(
            _delete_=True, type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)))
