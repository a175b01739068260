"""GHM-C / GHM-R for MMDetection 3.x (Li, Liu, Wang, AAAI 2019, arXiv:1811.05181)."""
__version__ = '0.1.0'
