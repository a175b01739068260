# Issue 9, ablation: focal loss + smooth L1 with gamma 3 instead of 2 (the tuning budget GHM-C
# gets with bins and momentum).
_base_ = '../../retinanet_r18-tiny_fpn_focal_shapes.py'

model = dict(bbox_head=dict(loss_cls=dict(gamma=3.0)))
