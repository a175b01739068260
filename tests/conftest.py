import os

# The Triton kernels run on CPU tensors through the interpreter; it must be on before the first
# @triton.jit is defined, i.e. before mmdet_ghm is imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
