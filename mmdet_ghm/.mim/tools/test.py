"""The test script `mim test mmdet_ghm CONFIG --checkpoint FILE` runs: mmdet's own tools/test.py.

mim looks for a package's scripts in <package>/.mim/tools/. The configs name mmdet_ghm in
custom_imports, so mmdet's script builds this package's losses, datasets and hooks; its arguments
are mmdet's (`--work-dir`, `--cfg-options`, `--out`, `--show-dir`, `--launcher`, ...).
"""
import os.path as osp
import runpy

import mmdet

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py'),
                   run_name='__main__')
