"""A config file as source: find a shipped config by name, re-assign top-level variables in the
source (what ``--cfg-options`` and override configs do, so derived fields follow), and resolve the
embedded default's ``{{tiny_models}}/NAME`` and ``{{tiny_data}}`` paths.

An override config (the tiny ones) names the config it changes (``base_config = 'NAME'``), optionally
files of shared re-assignments (``shared_overrides``), and re-assigns some of its variables:
``config_source`` returns the base's text with those expressions spliced in where the base assigns
each variable, and remembers which file and line every line came from, for errors.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmllava.errors import MMLLaVAError


def shipped_config_dir() -> Path:
    """The folder holding the shipped configs (works for editable and normal installs)."""
    import importlib.resources

    return Path(str(importlib.resources.files('mmllava.configs')))


def shipped_configs() -> dict[str, Path]:
    """Map config name (file stem) -> path, for every shipped config."""
    root = shipped_config_dir()
    found = {}
    for path in sorted(root.rglob('*.py')):
        if path.name.startswith('_'):
            continue
        found[path.stem] = path
    return found


def find_config(name_or_path: str | os.PathLike) -> Path:
    """Resolve a config given as a file path or as the name of a shipped config."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    name = path.name[:-3] if path.name.endswith('.py') else path.name
    configs = shipped_configs()
    if str(name_or_path) == name and name in configs:
        return configs[name]
    if path.suffix == '.py' or os.sep in str(name_or_path):
        raise MMLLaVAError(f'config file not found: {name_or_path} (looked for {path.absolute()}; '
                           'a shipped config is named without .py: mmllava list-cfg)')
    close = [n for n in configs if name.lower() in n.lower()][:5]
    hint = f'; similar: {", ".join(close)}' if close else '; run `mmllava list-cfg` to see them'
    raise MMLLaVAError(f'no config named {name!r} (neither a file nor a shipped config){hint}')


def _top_level_assignments(tree: ast.Module) -> dict[str, list[ast.Assign]]:
    assigns: dict[str, list[ast.Assign]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigns.setdefault(node.targets[0].id, []).append(node)
    return assigns


def _parse(source: str, path: Path) -> ast.Module:
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise MMLLaVAError(f'{path}:{e.lineno}: syntax error in config: {e.msg}') from None


@dataclass
class ConfigSource:
    """The Python text that runs for a config, and for each of its lines the file and line it comes
    from (an override config's come from several files), so errors name the line the user wrote."""
    text: str
    origins: list[tuple[str, int]]

    @classmethod
    def of_file(cls, path: Path, text: str) -> 'ConfigSource':
        return cls(text, [(str(path), n) for n in range(1, len(text.split('\n')) + 1)])

    def where(self, line: int) -> str:
        """``FILE:LINE`` of line ``line`` of ``text``."""
        path, origin = self.origins[min(line, len(self.origins)) - 1]
        return f'{path}:{origin}'


@dataclass
class _Value:
    """The new value of a top-level variable: Python source text, where it was written (None: an
    option, whose line stays the config's), and the comment that replaces the config's (None: keep)."""
    text: str
    origin: tuple[str, int] | None = None
    comment: str | None = None


def _reassign(source: ConfigSource, values: dict[str, _Value]) -> ConfigSource:
    """``source`` with the value of every top-level assignment of ``values``' keys replaced by theirs;
    everything else is kept byte for byte."""
    assigns = _top_level_assignments(ast.parse(source.text))
    lines = source.text.split('\n')
    edits = sorted(((node.value, values[key]) for key in values for node in assigns[key]),
                   key=lambda edit: (edit[0].lineno, edit[0].col_offset))
    out, origins, done = [], [], 0
    for node, value in edits:
        first, last = node.lineno - 1, node.end_lineno - 1
        out += lines[done:first]
        origins += source.origins[done:first]
        head = lines[first].encode()[:node.col_offset].decode()  # ast columns are UTF-8 byte offsets
        tail = lines[last].encode()[node.end_col_offset:].decode()
        if value.comment is not None:
            tail = f'  {value.comment}'
        new = value.text.split('\n')
        new[0] = head + new[0]
        new[-1] += tail
        out += new
        if value.origin is None:
            origins += [source.origins[first]] * len(new)
        else:
            origins += [(value.origin[0], value.origin[1] + i) for i in range(len(new))]
        done = last + 1
    return ConfigSource('\n'.join(out + lines[done:]), origins + source.origins[done:])


def rewrite_assignments(source: str, values: dict[str, Any]) -> str:
    """Return ``source`` with the top-level assignments of ``values``' keys replaced by the values."""
    return _reassign(ConfigSource.of_file(Path('config'), source),
                     {key: _Value(repr(value)) for key, value in values.items()}).text


BASE_CONFIG = 'base_config'
SHARED_OVERRIDES = 'shared_overrides'


def _items(node: ast.Assign) -> list[ast.expr]:
    """The value of ``name = x`` as a list: the elements of a list or tuple, else ``[x]``."""
    return node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]


def _string_constant(tree: ast.Module, name: str) -> ast.Assign | None:
    """The top-level ``name = 'text'`` (or ``name = ['text', ...]``) line of ``tree``, if any."""
    node = next(iter(_top_level_assignments(tree).get(name, [])), None)
    if node is None:
        return None
    return node if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in _items(node)) else None


def _base_config(tree: ast.Module) -> ast.Assign | None:
    """The ``base_config = 'NAME'`` line of an override config; None for a standalone config."""
    node = _string_constant(tree, BASE_CONFIG)
    return node if node is not None and isinstance(node.value, ast.Constant) else None


def _find_base(node: ast.Assign, path: Path) -> Path:
    """A shipped config's name, or a file path taken from the override file's folder."""
    name = node.value.value
    configs = shipped_configs()
    if name in configs:
        return configs[name]
    if (path.parent / name).is_file():
        return (path.parent / name).resolve()
    raise MMLLaVAError(f'{path}:{node.lineno}: {BASE_CONFIG}: no shipped config or file named {name!r} '
                       '(mmllava list-cfg names the shipped ones)')


def _comment(source: str, node: ast.AST) -> str | None:
    """The comment that ends ``node``'s last line, if any."""
    rest = source.split('\n')[node.end_lineno - 1].encode()[node.end_col_offset:].decode().strip()
    return rest if rest.startswith('#') else None


def _header(source: str) -> str:
    """The comment lines a config file starts with."""
    lines = source.split('\n')
    count = next((i for i, line in enumerate(lines) if not line.startswith('#')), len(lines))
    return '\n'.join(lines[:count])


def _override_values(path: Path, source: str, tree: ast.Module, base_tree: ast.Module, base_name: str,
                     skip: tuple[ast.AST, ...]) -> dict[str, _Value]:
    """The ``NAME = expression`` lines of an override file (``skip``: its own settings lines), checked
    against the base (``base_tree``): each NAME must be a top-level variable of it, imports must be
    ones it has."""
    base_assigns = _top_level_assignments(base_tree)
    base_imports = {ast.dump(n) for n in base_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    values: dict[str, _Value] = {}
    for node in tree.body:
        if node in skip or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue  # base_config / shared_overrides, a docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)) and ast.dump(node) in base_imports:
            continue  # for readers and linters: the expressions run in the base's namespace
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise MMLLaVAError(f'{path}:{node.lineno}: an override holds only `NAME = value` lines (and imports '
                               f'its base has): re-assignments of variables of {base_name}')
        name = node.targets[0].id
        if name not in base_assigns:
            raise MMLLaVAError(f'{path}:{node.lineno}: {base_name} has no variable named {name!r} to re-assign')
        if name in values:
            raise MMLLaVAError(f'{path}:{node.lineno}: {name} is re-assigned twice')
        values[name] = _Value(ast.get_source_segment(source, node.value), (str(path), node.value.lineno),
                              _comment(source, node))
    return values


def config_source(path: Path, _seen: tuple[Path, ...] = ()) -> ConfigSource:
    """The Python text that runs for the config file ``path``.

    A standalone config runs as written. An override config names the config it changes
    (``base_config = 'NAME'``: a shipped config, or a file next to it) and re-assigns some of its
    top-level variables (``NAME = expression``); it runs as the base's source with those values in
    place, each expression evaluated where the base assigns the variable (in the base's namespace,
    so ``torch.float32`` or ``data_root + 'x.json'`` work and derived fields follow), under the
    override's comment header. Re-assignments several overrides share can live in files of such
    lines that each names (``shared_overrides = ['FILE', ...]``, paths from its folder); they apply
    first, the override's own lines after. That text is also what ``copy_config`` writes."""
    source = path.read_text(encoding='utf-8')
    tree = _parse(source, path)
    base_node = _base_config(tree)
    if base_node is None:
        return ConfigSource.of_file(path, source)
    base_path = _find_base(base_node, path)
    if base_path in _seen + (path,):
        raise MMLLaVAError(f'{path}:{base_node.lineno}: {BASE_CONFIG}: {base_path} is based on this config')
    base = config_source(base_path, _seen + (path,))
    base_tree = ast.parse(base.text)
    shared_node = _string_constant(tree, SHARED_OVERRIDES)
    values: dict[str, _Value] = {}
    shared = []
    if shared_node is not None:
        for item in _items(shared_node):
            shared_path = (path.parent / item.value).resolve()
            if not shared_path.is_file():
                raise MMLLaVAError(f'{path}:{shared_node.lineno}: {SHARED_OVERRIDES}: no file {shared_path}')
            shared_source = shared_path.read_text(encoding='utf-8')
            values.update(_override_values(shared_path, shared_source, _parse(shared_source, shared_path),
                                           base_tree, base_path.stem, ()))
            shared.append(item.value)
    values.update(_override_values(path, source, tree, base_tree, base_path.stem, (base_node, shared_node)))
    flat = _reassign(base, values)
    # the override's header (what this config is) instead of the base's (how to edit the base)
    header = _header(source)
    base_header = _header(base.text)
    body_start = len(base_header.split('\n')) if base_header else 0
    body = flat.text.split('\n')[body_start:]
    note = [f'# Written out from {BASE_CONFIG} = {base_node.value.value!r}',
            f'# with the values of {", ".join(shared + [path.name])} re-assigned in it.']
    header_lines = header.split('\n') if header else []
    origins = [(str(path), n) for n in range(1, len(header_lines) + 1)] + [(str(path), base_node.lineno)] * 2
    return ConfigSource('\n'.join(header_lines + note + body), origins + flat.origins[body_start:])


EMBEDDED_PATH = re.compile(r'\{\{tiny_models\}\}/(\w+)|\{\{tiny_data\}\}')


def resolve_embedded_paths(source: str) -> str:
    """``source`` with ``{{tiny_models}}/NAME`` and ``{{tiny_data}}`` in its string constants
    replaced by absolute paths in the cache folder, building what is missing (see module doc)."""
    if '{{' not in source:
        return source
    from mmllava.tiny.cache import synthetic_data_path, tiny_model_path

    found = {match.group(0): match.group(1) for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             for match in EMBEDDED_PATH.finditer(node.value)}
    for text, model in found.items():
        path = tiny_model_path(model) if model else synthetic_data_path()
        # escaped as inside a quoted literal (backslashes of a Windows path, quotes)
        source = source.replace(text, repr(str(path))[1:-1])
    return source
