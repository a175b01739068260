"""What GHM does to the gradients of a run: ``GHMDensityHook`` records the gradient-norm histogram
and the harmonized weights of every GHM loss while training (local JSON records, TensorBoard
histograms and scalars); :mod:`~mmdet_ghm.diagnostics.plot` (``python -m mmdet_ghm.plot WORK_DIR``)
draws the paper's Fig. 1 and 2 from those records."""
from .density_hook import KEY_PREFIX, RECORDS_FILE, GHMDensityHook, find_densities

__all__ = ['GHMDensityHook', 'KEY_PREFIX', 'RECORDS_FILE', 'find_densities']
