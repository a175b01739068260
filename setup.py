from setuptools import find_packages, setup

setup(
    name='mmdet_ghm',
    version='0.1.0',
    description='Gradient Harmonizing Mechanism (GHM-C / GHM-R) for MMDetection 3.x: '
    'exact mmdet semantics, vectorized on CPU, fused Triton kernels on CUDA.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmdet_ghm', 'mmdet_ghm.*']),
    python_requires='>=3.9',
    # torch, mmcv, mmdet and triton are deliberately not pinned here: a loose torch spec makes pip
    # pull a multi-GB CUDA build; tools/env.sh installs the exact, tested stack.
    install_requires=['numpy'],
    extras_require={'test': ['pytest', 'hypothesis']},
)
