"""Checkpoints that load with torch's ``weights_only`` default (torch >= 2.6).

MMEngine 0.10.7 stores its message hub as pickled ``HistoryBuffer`` objects holding numpy arrays,
and a buffer's pickled state names its statistics methods through ``builtins.getattr``: torch's
safe unpickler refuses the file, so ``resume=True`` fails unless weights_only is switched off for
every load (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``). Allow-listing ``getattr`` would make every
checkpoint able to call anything, so this hook changes what is written instead: before a save it
turns each buffer and numpy value into tensors and plain containers, after a load it turns them
back, before the runner hands them to the message hub. The model, optimizer and scheduler states
(the GHM density included) are tensors and plain values already and pass through untouched.
"""
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from mmdet.registry import HOOKS

# Marker keys of the encoded values: a dict with exactly one of them is an encoded value.
_BUFFER, _ARRAY, _SCALAR = '__mmdet_ghm_history_buffer__', '__mmdet_ghm_ndarray__', \
    '__mmdet_ghm_npscalar__'
# numpy values no tensor holds as they are: strings and bytes (dtype, shape, whether an array,
# the elements), dates, durations and other byte orders (dtype, a native array of their bytes)
_TEXT, _VIEW = '__mmdet_ghm_nptext__', '__mmdet_ghm_npview__'


def _same_mapping(original: dict, items: dict) -> dict:
    # the message hub's runtime info is an OrderedDict; the safe unpickler knows that one
    return OrderedDict(items) if isinstance(original, OrderedDict) else items


def _encode(value: Any, where: str = 'checkpoint') -> Any:
    if isinstance(value, HistoryBuffer):
        logs, counts = value.data
        return {_BUFFER: dict(log=_encode(logs, where), count=_encode(counts, where),
                              max_length=value.max_length)}
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind in 'US':
            return {_TEXT: (array.dtype.str, list(array.shape), isinstance(value, np.ndarray),
                            array.reshape(-1).tolist())}
        if array.dtype.kind in 'Mm' or not array.dtype.isnative:
            native = np.dtype(f'i{array.dtype.itemsize}') if array.dtype.kind in 'Mm' else \
                array.dtype.newbyteorder('=')
            return {_VIEW: (array.dtype.str, _encode(value.view(native), where))}
        if array.dtype == object:
            raise TypeError(f'WeightsOnlyCheckpointHook: {where} is a numpy array of Python '
                            'objects, which a weights_only checkpoint cannot store')
        # ascontiguousarray would make a 0-dim array 1-dim
        tensor = torch.from_numpy(np.ascontiguousarray(array) if array.ndim else array).clone()
        return {_ARRAY: tensor} if isinstance(value, np.ndarray) else {_SCALAR: tensor}
    if isinstance(value, dict):
        return _same_mapping(value, {k: _encode(v, f'{where}[{k!r}]') for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        encoded = [_encode(v, f'{where}[{i}]') for i, v in enumerate(value)]
        return encoded if isinstance(value, list) else tuple(encoded)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == _BUFFER:
                return HistoryBuffer(_decode(inner['log']), _decode(inner['count']),
                                     inner['max_length'])
            if key == _ARRAY:
                return inner.numpy()
            if key == _SCALAR:
                return inner.numpy()[()]
            if key == _TEXT:
                dtype, shape, is_array, elements = inner
                array = np.array(elements, dtype=dtype).reshape(shape)
                return array if is_array else array[()]
            if key == _VIEW:
                dtype, native = inner
                return _decode(native).view(dtype)
        return _same_mapping(value, {k: _decode(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        decoded = [_decode(v) for v in value]
        return decoded if isinstance(value, list) else tuple(decoded)
    return value


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Write MMEngine checkpoints that ``torch.load(..., weights_only=True)`` accepts.

    Add it to ``custom_hooks`` (the configs of this package do). Checkpoints it wrote resume in
    runs that have it; checkpoints written without it still need torch's
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (only for files you trust).
    """

    priority = 'VERY_LOW'  # after every other hook has added what it saves

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ('meta', 'message_hub'):
            if key in checkpoint:
                checkpoint[key] = _encode(checkpoint[key], key)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ('meta', 'message_hub'):
            if key in checkpoint:
                checkpoint[key] = _decode(checkpoint[key])
