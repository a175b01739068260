# README's main job: the tiny from-scratch RetinaNet with GHM-C + GHM-R on the embedded shapes
# dataset (generated on first use), trained and evaluated on CPU in minutes.
#   bash tools/main.sh                                                  # train + COCO eval + paths
#   mim train mmdet configs/retinanet_r18-tiny_fpn_ghm_shapes.py          # the same through mim
_base_ = './_base_/retinanet_r18-tiny_fpn_shapes.py'

# The zoo's GHM hyperparameters (mmdet configs/ghm/retinanet_r50_fpn_ghm-1x_coco.py).
model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(
            _delete_=True, type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
