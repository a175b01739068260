"""The command ``python -m mmdet_ghm.plot WORK_DIR``: figures of a run's GHM density records.

The code lives in :mod:`mmdet_ghm.diagnostics.plot`; this module is the command's short name.
"""
import sys

from .diagnostics.plot import main, plot_run  # noqa: F401

if __name__ == '__main__':
    sys.exit(main())
