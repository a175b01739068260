"""Heads registered into ``mmdet.registry.MODELS`` when ``mmdet_ghm`` is imported."""
from .batch_density import (BatchDensityAnchorHead, BatchDensityATSSHead, BatchDensityMixin,
                            BatchDensityRetinaHead)

__all__ = ['BatchDensityMixin', 'BatchDensityAnchorHead', 'BatchDensityATSSHead',
           'BatchDensityRetinaHead']
