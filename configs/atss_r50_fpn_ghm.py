# ATSS R50-FPN, COCO 1x, with GHM-C as the classification loss
# (mmdet's atss/atss_r50_fpn_1x_coco.py, focal loss replaced).
# ATSSHead calls loss_cls(scores, labels, label_weights, avg_factor=...) like RetinaNet.
# GHM-R does not apply: ATSS regresses decoded boxes with GIoU weighted by centerness.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', './_base_/ghm_coco.py']

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

# mmdet's COCO data (data/coco/), checked: see _base_/ghm_coco.py.
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
