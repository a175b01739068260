# Issue 9, ablation (the paper's Table 3): GHM-C + smooth L1 with EMA momentum 0.5, not 0.75.
_base_ = '../../loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'

model = dict(bbox_head=dict(loss_cls=dict(momentum=0.5)))
