"""The package's module import graph, read with ``ast`` (nothing is imported): no cycles, and the
format, model and data layers stay independent of the training engine.

Only module-level imports count (those inside functions run later, on demand; the ones kept there
for start-up time carry a comment saying so). ``from a.b import c`` depends on ``a.b`` and, when
``a/b/c.py`` exists, on ``a.b.c``; importing ``a.b.c`` also runs each enclosing package's
``__init__`` that the importer is not itself inside.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / 'mmllava'


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob('*.py'))
            if 'configs' not in path.relative_to(PACKAGE_DIR).parts}  # configs are data read by load_config


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and 'TYPE_CHECKING' in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module):
    """Import nodes run when the module is imported: module level, including under ``if``/``try``."""
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending[:0] = node.body + [n for h in node.handlers for n in h.body] + node.orelse + node.finalbody
        elif isinstance(node, ast.With):
            pending[:0] = node.body


def _imported(name: str, node, modules: dict[str, Path]) -> set[str]:
    """The mmllava modules one import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ''
        if node.level:  # relative import
            package = name if modules[name].name == '__init__.py' else name.rpartition('.')[0]
            for _ in range(node.level - 1):
                package = package.rpartition('.')[0]
            base = f'{package}.{base}' if base else package
        targets = [base] + [f'{base}.{alias.name}' for alias in node.names]
    found = set()
    for target in targets:
        if target not in modules:
            continue
        found.add(target)
        parts = target.split('.')
        found.update('.'.join(parts[:i]) for i in range(1, len(parts))
                     if not name.startswith('.'.join(parts[:i])))  # enclosing packages run first
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> modules its top-level imports load``, over every module of mmllava."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
        graph[name] = set().union(*(_imported(name, node, modules) for node in _top_level_imports(tree)))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative depth-first search)."""
    state = {}  # name -> 1 while on the stack, 2 when done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_find_cycle_reports_the_cycle():
    """The checker itself: it finds a planted cycle and passes an acyclic graph."""
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


@pytest.mark.parametrize('layer', ['mmllava.formats', 'mmllava.models', 'mmllava.data'])
def test_layer_does_not_import_the_engine(layer):
    """Format, model and data code is used by converters, chat and serving without a training run:
    none of it may import ``mmllava.engine``, at module level or inside a function."""
    modules = _modules()
    offending = []
    for name, path in modules.items():
        if name != layer and not name.startswith(layer + '.'):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if any(target == 'mmllava.engine' or target.startswith('mmllava.engine.')
                       for target in _imported(name, node, modules)):
                    offending.append(f'{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno}: {ast.unparse(node)}')
    assert not offending, '\n'.join(offending)
