import os
import os.path as osp
import shutil
import sys

# The Triton kernels run on CPU tensors through the interpreter; it must be on before the first
# @triton.jit is defined, i.e. before mmdet_ghm is imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests draw the same examples on every run (CI must not fail on a new random draw);
# HYPOTHESIS_PROFILE=explore searches afresh with more examples.
settings.register_profile('ci', derandomize=True, database=None, deadline=None, max_examples=60,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('explore', deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mim_exe():
    """The `mim` command of this environment (tools/env.sh installs openmim)."""
    exe = osp.join(osp.dirname(sys.executable), 'mim')
    exe = exe if osp.isfile(exe) else shutil.which('mim')
    assert exe, 'openmim is not installed in this environment (tools/env.sh installs it)'
    return exe
