"""GHM-C / GHM-R for MMDetection 3.x (Li, Liu, Wang, AAAI 2019, arXiv:1811.05181).

Importing the package (``custom_imports=dict(imports=['mmdet_ghm'])`` in a config) makes mmdet's
``GHMC``/``GHMR`` registry names build this package's losses.
"""
from .density import GradientDensity
from .losses import GHMC, GHMR
from . import datasets, diagnostics, engine, models  # noqa: F401  (register datasets, hooks, heads)
from .version import __version__

__all__ = ['GradientDensity', 'GHMC', 'GHMR', '__version__']
