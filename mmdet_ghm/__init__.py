"""GHM-C / GHM-R for MMDetection 3.x (Li, Liu, Wang, AAAI 2019, arXiv:1811.05181).

Importing the package (``custom_imports=dict(imports=['mmdet_ghm'])`` in a config) makes mmdet's
``GHMC``/``GHMR`` registry names build this package's losses.
"""
from .density import GradientDensity
from .losses import GHMC, GHMR
from . import datasets, engine, models  # noqa: F401  (register the datasets, hooks and heads)

__version__ = '0.1.0'
__all__ = ['GradientDensity', 'GHMC', 'GHMR', '__version__']
