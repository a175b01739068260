# What every COCO config of this package adds to the mmdet config it inherits; list it after that
# config: _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/ghm_coco.py'].
# The data stay mmdet's (COCO 2017 under data/coco/: annotations/instances_{train,val}2017.json,
# train2017/, val2017/). mmengine forbids a key set by two bases, so each config swaps the dataset
# type itself (three lines): CheckedCocoDataset is mmdet's CocoDataset plus a check that names
# what is missing, and where, when COCO is not there.

# Importing mmdet_ghm registers its GHMC/GHMR in place of mmdet's, plus its datasets and hooks.
custom_imports = dict(imports=['mmdet_ghm'], allow_failed_imports=False)
# GHMCheckHook stops before the first iteration on GHMC without use_sigmoid=True, or on a head
# num_classes that differs from the dataset's classes; WeightsOnlyCheckpointHook makes the
# checkpoints load (and resume) under torch's weights_only default.
custom_hooks = [dict(type='GHMCheckHook'), dict(type='WeightsOnlyCheckpointHook')]
