"""GHM passes: vectorized PyTorch on CPU, fused Triton kernels on CUDA, one autograd Function."""
from .function import ghmc_loss, ghmr_loss

__all__ = ['ghmc_loss', 'ghmr_loss']
