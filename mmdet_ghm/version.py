"""The package's version: the one place setup.py and ``mmdet_ghm.__version__`` read it from."""
__version__ = '0.1.0'
