"""Runner-side helpers: configuration checks (registered hook ``GHMCheckHook``)."""
from .checks import GHMCheckHook, check_detector, check_ghm_heads, check_num_classes
from .density_hook import GHMDensityHook  # noqa: F401  (registers the hook)

__all__ = ['GHMCheckHook', 'check_detector', 'check_ghm_heads', 'check_num_classes']
