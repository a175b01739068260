"""Registry replacement whatever the import order, and checkpoint compatibility with mmdet."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GHMC, GHMR

ORDERS = {
    'ours_first': 'import mmdet_ghm\nimport mmdet.models\n',
    'mmdet_first': 'import mmdet.models\nimport mmdet_ghm\n',
    'register_all_then_ours': ('from mmdet.utils import register_all_modules\n'
                               'register_all_modules()\nimport mmdet_ghm\n'),
    'ours_then_register_all': ('import mmdet_ghm\nfrom mmdet.utils import register_all_modules\n'
                               'register_all_modules()\n'),
    'custom_imports_in_config': ('from mmengine.config import Config\n'
                                 'from mmdet.utils import register_all_modules\n'
                                 'Config.fromstring("custom_imports = dict(imports=[\'mmdet_ghm\'],'
                                 ' allow_failed_imports=False)", ".py")\n'
                                 'register_all_modules()\n'),
}


@pytest.mark.parametrize('order', sorted(ORDERS))
def test_registry_builds_ours_whatever_the_import_order(order):
    script = ORDERS[order] + textwrap.dedent('''
        from mmdet.registry import MODELS
        from mmengine.registry import DefaultScope
        DefaultScope.get_instance('t', scope_name='mmdet')
        for name in ('GHMC', 'GHMR'):
            built = MODELS.build(dict(type=name))
            assert type(built).__module__ == 'mmdet_ghm.losses', (name, type(built))
        print('ok')
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]


@pytest.mark.parametrize('momentum', [0.0, 0.75])
def test_mmdet_checkpoint_loads_into_ours(momentum):
    ref = MMDetGHMC(bins=30, momentum=momentum)
    pred, labels = torch.randn(40, 5) * 3, torch.zeros(40, 5)
    for _ in range(3):
        ref(pred, labels, torch.ones(40, 5))
    ours = GHMC(bins=30, momentum=momentum)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    if momentum > 0:
        assert torch.equal(ours.density.acc_sum, ref.acc_sum) and ours.density.acc_sum.any()
    assert torch.equal(ours.density.edges, ref.edges)
    reg_ref = MMDetGHMR(bins=10, momentum=0.7)
    reg_ref(torch.randn(9, 4), torch.randn(9, 4), torch.ones(9, 4))
    reg = GHMR(bins=10, momentum=0.7)
    reg.load_state_dict(reg_ref.state_dict())
    assert torch.equal(reg.density.acc_sum, reg_ref.acc_sum)
    assert torch.equal(reg.density.edges, reg_ref.edges)


def test_nested_mmdet_checkpoint_in_a_model_loads():
    """Keys as they sit in a detector checkpoint: bbox_head.loss_cls.acc_sum."""
    ref = torch.nn.Module()
    ref.loss_cls = MMDetGHMC(bins=30, momentum=0.75)
    ref.loss_cls.acc_sum += torch.arange(30.0)
    ours = torch.nn.Module()
    ours.loss_cls = GHMC(bins=30, momentum=0.75)
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.loss_cls.density.acc_sum, torch.arange(30.0))


def test_state_dict_round_trip_and_bins_mismatch(tmp_path):
    loss = GHMC(bins=30, momentum=0.75)
    loss(torch.randn(50, 4) * 3, torch.randint(0, 5, (50,)))
    path = tmp_path / 'ghmc.pth'
    torch.save(loss.state_dict(), path)
    restored = GHMC(bins=30, momentum=0.75)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.density.acc_sum, loss.density.acc_sum)
    assert set(GHMC(bins=30, momentum=0).state_dict()) == set(loss.state_dict())
    with pytest.raises(RuntimeError, match='size mismatch for density.acc_sum'):
        GHMC(bins=10).load_state_dict(loss.state_dict())
