"""The package's import graph, read from the source: no cycles, and no module importing a package
above it (its ``__init__`` imports the module, so such an arrow is a cycle waiting to happen)."""
import ast
import os
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'mmdet_ghm'


def _modules():
    """``{module name: (path, is_package)}`` of every module of the package."""
    found = {}
    for root, _, files in os.walk(osp.join(REPO, PACKAGE)):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(root, name)
                parts = osp.relpath(path[:-3], REPO).split(os.sep)
                is_package = parts[-1] == '__init__'
                found['.'.join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph():
    """``{module: set of the package's modules it imports}``."""
    modules = _modules()
    graph = {}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rsplit('.', 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')[:len(package.split('.')) - node.level + 1]
                    source = '.'.join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                # `from pkg import name`: the module pkg.name where there is one (a sibling
                # import), else a name of pkg itself
                for alias in node.names:
                    submodule = f'{source}.{alias.name}'
                    targets.add(submodule if submodule in modules else source)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def test_no_cycles():
    graph = import_graph()
    state = {}

    def visit(module, stack):
        state[module] = 'open'
        for target in sorted(graph[module]):
            assert state.get(target) != 'open', 'import cycle: ' + ' -> '.join(
                stack[stack.index(target):] + [target])
            if target not in state:
                visit(target, stack + [target])
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_a_package_above_it():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if m.startswith(t + '.')]
    assert not upward, upward


def test_the_graph_is_read():
    graph = import_graph()
    assert 'mmdet_ghm.density' in graph['mmdet_ghm.losses']
    assert 'mmdet_ghm.diagnostics.density_hook' in graph['mmdet_ghm.diagnostics.plot']
