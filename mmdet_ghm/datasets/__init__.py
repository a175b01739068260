"""Datasets registered into ``mmdet.registry.DATASETS`` when ``mmdet_ghm`` is imported."""
from .annotation_noise import apply_annotation_noise
from .checked_coco import CheckedCocoDataset
from .shapes_generator import SHAPE_CLASSES, ensure_split, generate_split
from .synthetic_shapes import SyntheticShapesDataset

__all__ = ['apply_annotation_noise', 'CheckedCocoDataset', 'SyntheticShapesDataset',
           'SHAPE_CLASSES', 'ensure_split', 'generate_split']
