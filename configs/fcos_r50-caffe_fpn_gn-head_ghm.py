# FCOS R50-caffe-FPN (GN head), COCO 1x, with GHM-C as the classification loss
# (mmdet's fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py, focal loss replaced).
# FCOSHead calls loss_cls(scores, labels, avg_factor=...) without label weights: every location is a
# valid sample, which this package's GHMC accepts (mmdet's needs label_weight).
# GHM-R does not apply: FCOS regresses decoded boxes with an IoU loss weighted by centerness
# (loss_bbox(pred, target, weight=..., avg_factor=...)), not the anchor deltas of GHM-R's ASL1.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', './_base_/ghm_coco.py']

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)))
# The base already clips gradients at max_norm=35, as GHM wants.

# mmdet's COCO data (data/coco/), checked: see _base_/ghm_coco.py.
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
