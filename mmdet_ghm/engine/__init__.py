"""Runner-side helpers, registered in mmdet's HOOKS: configuration checks (``GHMCheckHook``),
density records (``GHMDensityHook``) and weights_only-loadable checkpoints
(``WeightsOnlyCheckpointHook``)."""
from .checkpoint_hook import WeightsOnlyCheckpointHook
from .checks import GHMCheckHook, check_detector, check_ghm_heads, check_num_classes
from .density_hook import GHMDensityHook

__all__ = ['GHMCheckHook', 'GHMDensityHook', 'WeightsOnlyCheckpointHook', 'check_detector',
           'check_ghm_heads', 'check_num_classes']
