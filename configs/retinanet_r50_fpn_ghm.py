# RetinaNet R50-FPN with GHM-C / GHM-R on COCO 2017, 1x schedule: mmdet's zoo config
# (configs/ghm/retinanet_r50_fpn_ghm-1x_coco.py, box AP 37.0) with this package's losses.
#   mim train mmdet configs/retinanet_r50_fpn_ghm.py                      # 1 GPU
#   mim train mmdet configs/retinanet_r50_fpn_ghm.py --gpus 8 --launcher pytorch
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

# Importing mmdet_ghm registers its GHMC/GHMR in place of mmdet's, plus the datasets and hook below.
custom_imports = dict(imports=['mmdet_ghm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        # use_sigmoid=True must be spelled out: the head reads it from this dict to size its output.
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(
            _delete_=True, type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)))

# GHM's re-weighting can produce large early gradients: the zoo clips them.
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

# COCO 2017 under data_root: annotations/instances_{train,val}2017.json, train2017/, val2017/.
# CheckedCocoDataset is mmdet's CocoDataset plus a check that names what is missing, and where.
data_root = 'data/coco/'
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# Stops before the first iteration on GHMC without use_sigmoid=True, or on num_classes that differ
# from the dataset's classes.
custom_hooks = [dict(type='GHMCheckHook'), dict(type='WeightsOnlyCheckpointHook')]
