# Issue 9, E3 (density scope): GHM-C + smooth L1 with the paper's batch-wide density (one GHM-C
# call per iteration over all FPN levels); per-level twin: loss_comparison/..._ghmc_shapes.py.
_base_ = '../loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'

model = dict(bbox_head=dict(type='BatchDensityRetinaHead'))
