# GFL R50-FPN, COCO 1x, with GHM-C as the classification loss
# (mmdet's gfl/gfl_r50_fpn_1x_coco.py, Quality Focal Loss replaced).
# GFLHead calls loss_cls(scores, (labels, IoU scores), weight=label_weights, avg_factor=...): GHM-C
# takes the (labels, scores) pair as the soft BCE target it stands for (the IoU at the labelled
# class, 0 elsewhere), so GHM's density harmonization replaces QFL's |y - sigmoid|^beta factor.
# GHM-C normalizes by its valid elements, as in RetinaNet. GHM-R does not apply: GFL regresses
# box distributions (GIoU + distribution focal loss).
_base_ = 'mmdet::gfl/gfl_r50_fpn_1x_coco.py'
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
