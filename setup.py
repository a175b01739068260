"""mmdet_ghm: GHM-C / GHM-R for MMDetection 3.x, as a plugin.

The wheel ships the configs of the repository's top-level ``configs/`` inside the package, under
``mmdet_ghm/.mim/configs/``, where OpenMMLab's ``mim`` looks for a package's configs, next to the
scripts mim runs (``mmdet_ghm/.mim/tools/``), so that ``mim train mmdet_ghm
retinanet_r18-tiny_fpn_ghm_shapes.py`` works from an installed wheel. The configs are copied at
build time, as mmdet's own setup.py does, so every config added to ``configs/`` is shipped. In a
clone, name the config by its path instead: ``mim train mmdet configs/<config>.py``.
"""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
# What mim reads from <package>/.mim/ (destination: source in the repository).
MIM_FILES = {'configs': 'configs', 'tools': osp.join('mmdet_ghm', '.mim', 'tools')}


def read_version():
    # Read, not imported: importing mmdet_ghm needs torch and mmdet, which may not be there yet.
    scope = {}
    with open(osp.join(ROOT, 'mmdet_ghm', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


class BuildPyWithMimFiles(build_py):
    """build_py that also copies the configs and mim's scripts into ``mmdet_ghm/.mim/``."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads configs/ in the clone
            return
        mim_dir = osp.join(self.build_lib, 'mmdet_ghm', '.mim')
        if osp.islink(mim_dir) or osp.isfile(mim_dir):
            os.remove(mim_dir)
        elif osp.isdir(mim_dir):
            shutil.rmtree(mim_dir)
        for dst, src in MIM_FILES.items():
            shutil.copytree(osp.join(ROOT, src), osp.join(mim_dir, dst),
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


setup(
    name='mmdet_ghm',
    version=read_version(),
    description='Gradient Harmonizing Mechanism (GHM-C / GHM-R) for MMDetection 3.x: '
    'exact mmdet semantics, fused C++ passes on CPU, fused Triton kernels on CUDA.',
    long_description=open(osp.join(ROOT, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmdet_ghm', 'mmdet_ghm.*']),
    # the C++ CPU passes, compiled on first use (mmdet_ghm/ops/native_passes.py)
    package_data={'mmdet_ghm.ops': ['*.cpp']},
    python_requires='>=3.10',
    # The ranges that were tested (mmdet 3.3.0, mmengine 0.10.7, mmcv 2.1.0). torch and triton are
    # left to the user's install: a torch requirement lets pip replace the user's build (CPU or
    # the CUDA version of their driver) with another one, several GB, and triton comes with CUDA
    # torch builds; tools/env.sh installs the exact tested stack.
    install_requires=[
        'mmdet>=3.3,<3.4',
        'mmengine>=0.10.7,<0.11',
        'mmcv>=2.1,<2.2',
        'numpy',
    ],
    extras_require={
        'tensorboard': ['tensorboard'],
        'test': ['pytest', 'hypothesis', 'tensorboard'],
    },
    cmdclass={'build_py': BuildPyWithMimFiles},
    zip_safe=False,
)
