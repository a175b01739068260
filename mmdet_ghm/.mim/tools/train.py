"""The training script `mim train mmdet_ghm CONFIG` runs: mmdet's own tools/train.py, unchanged.

mim looks for a package's scripts in <package>/.mim/tools/. The configs name mmdet_ghm in
custom_imports, so mmdet's script builds this package's losses, datasets and hooks; its arguments
are mmdet's (`--work-dir`, `--cfg-options`, `--resume`, `--amp`, `--launcher`, ...).
"""
import os.path as osp
import runpy

import mmdet

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py'),
                   run_name='__main__')
