# RetinaNet R50-FPN with GHM-C / GHM-R on COCO 2017, 1x schedule: mmdet's zoo config
# (configs/ghm/retinanet_r50_fpn_ghm-1x_coco.py, box AP 37.0) with this package's losses.
#   mim train mmdet configs/retinanet_r50_fpn_ghm.py                      # 1 GPU
#   mim train mmdet configs/retinanet_r50_fpn_ghm.py --gpus 8 --launcher pytorch
# custom_imports (mmdet_ghm) and the hooks come from ./_base_/ghm_coco.py.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/ghm_coco.py']

model = dict(
    bbox_head=dict(
        # use_sigmoid=True must be spelled out: the head reads it from this dict to size its output.
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(
            _delete_=True, type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)))

# GHM's re-weighting can produce large early gradients: the zoo clips them.
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

# mmdet's COCO data (data/coco/), checked: see _base_/ghm_coco.py.
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
