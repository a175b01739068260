"""Runner-side helpers, registered in mmdet's HOOKS: configuration checks (``GHMCheckHook``) and
weights_only-loadable checkpoints (``WeightsOnlyCheckpointHook``). The density records
(``GHMDensityHook``) are in :mod:`mmdet_ghm.diagnostics`."""
from .checkpoint_hook import WeightsOnlyCheckpointHook
from .checks import GHMCheckHook, check_detector, check_ghm_heads, check_num_classes

__all__ = ['GHMCheckHook', 'WeightsOnlyCheckpointHook', 'check_detector', 'check_ghm_heads',
           'check_num_classes']
