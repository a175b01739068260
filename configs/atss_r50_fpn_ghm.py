# ATSS R50-FPN, COCO 1x, with GHM-C as the classification loss
# (mmdet's atss/atss_r50_fpn_1x_coco.py, focal loss replaced).
# ATSSHead calls loss_cls(scores, labels, label_weights, avg_factor=...) like RetinaNet.
# GHM-R does not apply: ATSS regresses decoded boxes with GIoU weighted by centerness.
_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_ghm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

data_root = 'data/coco/'
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

custom_hooks = [dict(type='GHMCheckHook'), dict(type='WeightsOnlyCheckpointHook')]
