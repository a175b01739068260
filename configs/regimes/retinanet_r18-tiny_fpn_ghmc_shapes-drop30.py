# Issue 9, E1 (annotation noise): GHM-C + smooth L1 with 30 % of the train split's boxes missing
# (the same boxes in every run: noise seed 0); the val split stays clean.
_base_ = '../loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'

train_dataloader = dict(dataset=dict(annotation_noise=dict(drop=0.3, seed=0)))
