import os
import os.path as osp
import shutil
import sys

# The Triton kernels run on CPU tensors through the interpreter; it must be on before the first
# @triton.jit is defined, i.e. before mmdet_ghm is imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch  # noqa: E402


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
