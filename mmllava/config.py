"""Configs: find shipped configs by name, copy them, load them with overrides, build objects.

Configs are mmengine pure-Python files in XTuner's five parts. ``--cfg-options`` on a top-level
variable (``llm_name_or_path=/models/x``) re-assigns that variable *in the config source* before it
is executed, so every field derived from it (``model.llm.path``, ``data_path = data_root + ...``)
follows. Dotted keys (``model.freeze_llm=False``) are merged into the loaded config afterwards.
An override config (the tiny ones) names the config it changes (``base_config = 'NAME'``) and
re-assigns some of its variables the same way, in the source (``config_source``).

Paths in configs are taken from the current folder, except the embedded default's: a string that
holds ``{{tiny_models}}/NAME`` or ``{{tiny_data}}`` gets the absolute path of the tiny model NAME or
of the synthetic shapes data, built on first use into mmllava's cache folder (``mmllava.tiny.cache``),
so the tiny configs, and copies of them, run from any folder.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mmllava.errors import MMLLaVAError, PathNotFoundError

CONFIG_SUFFIX = '_copy.py'


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


def copy_config(name_or_path: str, save_dir: str | os.PathLike) -> Path:
    """Copy a config to ``SAVE_DIR/<name>_copy.py`` (XTuner's naming) and return the new path.

    An override config (``base_config = ...``, as the tiny ones) is written flattened: its base with
    the override's values in place, one standalone file that loads to the same config."""
    src = find_config(name_or_path)
    save_dir = Path(save_dir).expanduser().resolve()  # shown whole
    save_dir.mkdir(parents=True, exist_ok=True)
    dst = save_dir / (src.stem + CONFIG_SUFFIX)
    source = src.read_text(encoding='utf-8')
    if _base_config(_parse(source, src)) is None:
        shutil.copyfile(src, dst)
    else:
        dst.write_text(config_source(src).text, encoding='utf-8')
    return dst


def parse_cfg_value(value: str) -> Any:
    """One ``--cfg-options`` value: a Python literal (``2``, ``'a b'``, ``['x y', 'z']``) as written,
    else mmengine DictAction's forms (``a,b`` lists, ``true``/``none``), else the plain string.

    Literals come first because DictAction deletes every space (``SYSTEM=hello world`` would
    become ``helloworld``).
    """
    from mmengine.config import DictAction

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    if any(c in value for c in ',[]()'):
        return DictAction._parse_iterable(value)
    return DictAction._parse_int_float_bool(value)


def parse_cfg_options(options: Iterable[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings (see ``parse_cfg_value``) into a dict."""
    parsed = {}
    for option in options or ():
        key, sep, value = option.partition('=')
        if not sep or not key:
            raise MMLLaVAError(f'--cfg-options expects KEY=VALUE, got {option!r}')
        parsed[key.strip()] = parse_cfg_value(value)
    return parsed


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


def _string_constant(tree: ast.Module, name: str) -> ast.Assign | None:
    """The top-level ``name = 'text'`` (or ``name = ['text', ...]``) line of ``tree``, if any."""
    node = next(iter(_top_level_assignments(tree).get(name, [])), None)
    if node is None:
        return None
    items = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
    return node if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items) else None


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


def _override_values(path: Path, source: str, tree: ast.Module, base: ConfigSource, base_name: str,
                     skip: tuple[ast.AST, ...]) -> dict[str, _Value]:
    """The ``NAME = expression`` lines of an override file (``skip``: its own settings lines), checked
    against the base: each NAME must be a top-level variable of it, imports must be ones it has."""
    base_tree = ast.parse(base.text)
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
    shared_node = _string_constant(tree, SHARED_OVERRIDES)
    values: dict[str, _Value] = {}
    shared = []
    if shared_node is not None:
        items = shared_node.value.elts if isinstance(shared_node.value, (ast.List, ast.Tuple)) else [shared_node.value]
        for item in items:
            shared_path = (path.parent / item.value).resolve()
            if not shared_path.is_file():
                raise MMLLaVAError(f'{path}:{shared_node.lineno}: {SHARED_OVERRIDES}: no file {shared_path}')
            shared_source = shared_path.read_text(encoding='utf-8')
            values.update(_override_values(shared_path, shared_source, _parse(shared_source, shared_path), base,
                                           base_path.stem, ()))
            shared.append(item.value)
    values.update(_override_values(path, source, tree, base, base_path.stem, (base_node, shared_node)))
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


def _error_line(error: BaseException, executed: str) -> int | None:
    """The line of ``executed`` (the config file that ran) where ``error`` was raised."""
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == executed:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def load_config(name_or_path: str | os.PathLike, cfg_options: dict[str, Any] | None = None):
    """Load a config (path or shipped name; standalone or an override, see ``config_source``) as an
    mmengine ``Config`` with ``--cfg-options`` applied.

    A config that fails to run is one ``MMLLaVAError``: ``FILE:LINE: the config failed to load:
    <Python's message>``, FILE:LINE being where the failing line was written."""
    from mmengine.config import Config

    path = find_config(name_or_path)
    cfg_options = dict(cfg_options or {})
    source = config_source(path)
    assigns = _top_level_assignments(ast.parse(source.text))
    top = {k: v for k, v in cfg_options.items() if '.' not in k and k in assigns}
    dotted = {k: v for k, v in cfg_options.items() if k not in top}
    for key in dotted:
        if '.' not in key:
            raise MMLLaVAError(f'{path}: --cfg-options {key}: the config has no variable named {key!r}')
    if top:
        source = _reassign(source, {key: _Value(repr(value)) for key, value in top.items()})
    run_text = resolve_embedded_paths(source.text)
    executed = str(path)
    try:
        if run_text != path.read_text(encoding='utf-8'):
            with tempfile.TemporaryDirectory(prefix='mmllava_cfg_') as tmp:
                executed = str(Path(tmp) / path.name)
                Path(executed).write_text(run_text, encoding='utf-8')
                cfg = Config.fromfile(executed)
        else:
            cfg = Config.fromfile(executed)
    except MMLLaVAError:
        raise
    except Exception as e:  # a user's config raising while it executes
        line = _error_line(e, executed)
        where = source.where(line) if line else str(path)
        raise MMLLaVAError(f'{where}: the config failed to load: {type(e).__name__}: {e}') from None
    if dotted:
        cfg.merge_from_dict(dotted, allow_list_keys=True)
    restore_objects(cfg._cfg_dict)
    # Keep the user's path (not the temporary copy) for work-dir naming and logging.
    object.__setattr__(cfg, '_filename', str(path))
    return cfg


def _dumped_object(value: str, is_type: bool):
    """The lazy import (as mmengine keeps a config's imports) of what a dumped config names by its
    import path, or ``None`` when ``value`` is not one: a torch dtype (``'torch.bfloat16'``)
    anywhere, an importable ``type`` (``'mmllava.models.LLaVAModel'``)."""
    import torch
    from mmengine.config.lazy import LazyAttr, LazyObject

    if value.startswith('torch.') and isinstance(getattr(torch, value[6:], None), torch.dtype):
        return LazyAttr(value[6:], LazyObject('torch'))
    if is_type and '.' in value:
        module, _, attr = value.rpartition('.')
        with contextlib.suppress(ImportError, AttributeError, ValueError):
            getattr(importlib.import_module(module), attr)
            return LazyObject(module, attr)
    return None


def restore_objects(node: Any) -> Any:
    """Turn the import paths of a dumped config back into the objects they name, in place.

    mmengine dumps a config's classes, functions and dtypes as strings (``type='mmllava.models.LLaVAModel'``,
    ``torch_dtype='torch.bfloat16'``), as in the copy ``train`` writes into the work dir and in XTuner's
    work dirs. Code that compares ``type`` with a class, or passes a dtype to transformers, would fail on
    them, so every config is read back with the objects (XTuner restores dtypes the same way). They are
    kept as mmengine's lazy imports, as a config's own imports are, so the config dumps the same
    strings again. A ``type`` that does not import (a registry name like ``'OptimWrapper'``) stays a string.
    """
    if isinstance(node, dict):
        items = list(dict.items(node))  # the stored values: ConfigDict.items() would build lazy imports
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return node
    for key, value in items:
        if isinstance(value, str):
            restored = _dumped_object(value, key == 'type')
            if restored is not None:
                node[key] = restored
        elif isinstance(value, (dict, list)):
            restore_objects(value)
        elif isinstance(value, tuple):
            for item in value:  # a tuple's items stay; dicts inside it are restored in place
                restore_objects(item)
    return node


def _imported(dotted: str) -> Any:
    """The object at the import path ``dotted`` (``'torch.optim.AdamW'``), or None when it does not import."""
    module, _, attr = dotted.rpartition('.')
    with contextlib.suppress(ImportError, AttributeError, ValueError):
        return getattr(importlib.import_module(module), attr)
    return None


def _resolve_type(obj_type):
    if callable(obj_type):
        return obj_type
    imported = _imported(obj_type) if isinstance(obj_type, str) and '.' in obj_type else None
    if imported is not None:
        return imported
    raise MMLLaVAError(f'cannot build {obj_type!r}: `type` must be a callable or a dotted import path')


def build(cfg: Any) -> Any:
    """Build ``dict(type=callable_or_dotted_path, **kwargs)``; other values are returned unchanged.

    Nested dicts that carry ``type`` are built first, so a config can name a whole tree of
    components. Lists and tuples are built element-wise.
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(build(item) for item in cfg)
    if not isinstance(cfg, dict) or 'type' not in cfg:
        return cfg
    kwargs = {k: build(v) for k, v in cfg.items() if k != 'type'}
    return _resolve_type(cfg['type'])(**kwargs)


@contextlib.contextmanager
def reported_config_errors(cfg, builds: str | None = None):
    """Run a command's building and training so that the user's mistakes are one line each:
    a component the config calls with an argument it does not take is refused before anything
    is built (``check_arguments``; ``builds``: the one part of the config the command builds, e.g.
    ``train_dataloader.dataset``, so that it does not import the rest), and an ``MMLLaVAError``
    gets ``with_config_hint``. Any other error keeps its traceback (a ``TypeError`` from inside a
    component is a bug there, not a config mistake)."""
    try:
        check_arguments(cfg, builds)
        yield
    except MMLLaVAError as e:
        raise with_config_hint(cfg, e) from None


# Registries of the fields whose components mmengine's Runner builds, to find the class of a
# `type` given by its registered name ('DefaultSampler'); the nearest such key above a dict decides.
_RUNNER_REGISTRIES = {
    'model': 'MODELS', 'dataset': 'DATASETS', 'sampler': 'DATA_SAMPLERS', 'batch_sampler': 'DATA_SAMPLERS',
    'collate_fn': 'FUNCTIONS', 'optim_wrapper': 'OPTIM_WRAPPERS', 'optimizer': 'OPTIMIZERS',
    'param_scheduler': 'PARAM_SCHEDULERS', 'default_hooks': 'HOOKS', 'custom_hooks': 'HOOKS',
    'train_cfg': 'LOOPS', 'val_cfg': 'LOOPS', 'test_cfg': 'LOOPS', 'visualizer': 'VISUALIZERS',
    'vis_backends': 'VIS_BACKENDS', 'log_processor': 'LOG_PROCESSORS', 'model_wrapper_cfg': 'MODEL_WRAPPERS',
    'strategy': 'STRATEGIES'}
# Keys mmengine's builders take out of a component's dict before calling it: the registry scope,
# optim_wrapper's constructor settings, a scheduler's epoch-to-iteration flag, a hook's priority.
_RUNNER_KEYS = frozenset({'type', '_scope_', 'constructor', 'paramwise_cfg', 'convert_to_iter_based', 'priority'})


def _component(type_, path: tuple) -> Any:
    """The callable a config dict's ``type`` names, or None when it cannot be known without building
    (a lazy import that fails, a registry name outside the fields mmengine builds)."""
    from mmengine.config.lazy import LazyAttr, LazyObject

    if isinstance(type_, (LazyObject, LazyAttr)):
        try:
            type_ = type_.build()
        except Exception:  # an import the config names but this environment lacks: reported when built
            return None
    if callable(type_):
        return type_
    if not isinstance(type_, str):
        return None
    if '.' in type_:
        return _imported(type_)
    registry = next((_RUNNER_REGISTRIES[key] for key in reversed(path) if key in _RUNNER_REGISTRIES), None)
    if registry is None:
        return None
    import mmengine.registry
    import mmengine.runner  # noqa: F401  (registers the classes the Runner builds by name)

    with contextlib.suppress(Exception):  # mmengine raises for names outside its scopes
        return getattr(mmengine.registry, registry).get(type_)
    return None


def _unexpected_arguments(component, keys: Iterable[str]) -> list[str]:
    """The keys that ``component``'s signature has no keyword parameter for (none if it takes ``**kwargs``
    or has no signature Python can read)."""
    import inspect

    try:
        parameters = inspect.signature(component).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    named = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return [key for key in keys if key not in named]


def _call_name(component) -> str:
    """How Python names the call in its own message: ``Class.__init__`` or ``function``."""
    if isinstance(component, type):
        return f'{component.__name__}.__init__'
    return getattr(component, '__qualname__', None) or repr(component)


def check_arguments(cfg, within: str | None = None) -> None:
    """Refuse a config that calls a component with a keyword it does not take, before anything is
    built: ``CONFIG: KEY: Name.__init__() got an unexpected keyword argument 'x'``.

    Every dict with a ``type`` in the config (or in its part at the dotted key ``within``) is
    checked against the signature of what ``type`` names (missing arguments are not: mmengine
    passes some itself). The check is on the config, not on a ``TypeError`` caught while
    building, so an error inside a component stays its own.
    """
    def walk(node, path):
        if isinstance(node, dict):
            items = list(dict.items(node))  # stored values: ConfigDict.items() would import lazies
            if 'type' in node:
                component = _component(dict.__getitem__(node, 'type'), path)
                keys = [key for key, _ in items if key not in _RUNNER_KEYS]
                unexpected = _unexpected_arguments(component, keys) if component is not None else []
                if unexpected:
                    where = '.'.join(str(part) for part in path)
                    noun = 'an unexpected keyword argument' if len(unexpected) == 1 else 'unexpected keyword arguments'
                    raise MMLLaVAError(f'{cfg.filename}: {where}: {_call_name(component)}() got {noun} '
                                       + ', '.join(repr(key) for key in unexpected))
        elif isinstance(node, (list, tuple)):
            items = list(enumerate(node))
        else:
            return
        for key, value in items:
            walk(value, (*path, key))

    node, path = (cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg), ()
    for key in within.split('.') if within else ():
        if not isinstance(node, dict) or key not in node:
            return
        node, path = dict.__getitem__(node, key), (*path, key)
    walk(node, path)


def is_shipped(config_path: str | os.PathLike) -> bool:
    """Whether ``config_path`` is one of the configs inside the installed package (not the user's)."""
    return Path(config_path).resolve().is_relative_to(shipped_config_dir().resolve())


def how_to_change(cfg, key: str) -> str:
    """How the user changes ``key``: in their own config file, or (a shipped config) with
    ``--cfg-options`` or in a copy of it: never by editing a file inside the installed package."""
    if not is_shipped(cfg.filename):
        return f'edit {key} in {cfg.filename}'
    name = Path(cfg.filename).stem
    return f'set --cfg-options {key}=..., or edit {key} in a copy: mmllava copy-cfg {name} .'


def _made_by(path: str) -> str | None:
    """``mmllava train CONFIG`` for a path inside ``work_dirs/CONFIG`` (the default work dir of
    that config, run in the current folder), when CONFIG is a shipped config or a file here."""
    parts = Path(os.path.normpath(path)).parts
    if 'work_dirs' not in parts[:-1]:
        return None
    name = parts[parts.index('work_dirs') + 1]
    if name in shipped_configs():
        return f'mmllava train {name}'
    if Path(name + '.py').is_file():
        return f'mmllava train {name}.py'
    return None


def _same_value(a: Any, b: Any) -> bool:
    """Whether a config variable's value ``a`` is (or, a list, holds) the value ``b`` an error is
    about: equal paths (``./data/x.json`` is ``data/x.json``), or equal values of one plain type."""
    if isinstance(a, (list, tuple)) and not isinstance(b, (list, tuple)):
        return any(_same_value(item, b) for item in a)
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return os.path.normpath(os.fspath(a)) == os.path.normpath(os.fspath(b))
    return type(a) is type(b) and isinstance(a, (int, float, bool)) and a == b


def config_variable(cfg, error: MMLLaVAError) -> str | None:
    """The top-level variable of ``cfg`` that ``error`` is about: the one its ``setting`` names
    when that holds its ``value`` (or when the error has no value), else the only variable
    holding that value. None when no variable, or several, fit (the value came from elsewhere:
    a dotted ``--cfg-options``, a derived field)."""
    variables = dict(cfg.items())
    if error.setting in variables and (error.value is None or _same_value(variables[error.setting], error.value)):
        return error.setting
    if error.value is None:
        return None
    holding = [key for key, value in variables.items() if _same_value(value, error.value)]
    return holding[0] if len(holding) == 1 else None


def with_config_hint(cfg, error: MMLLaVAError) -> MMLLaVAError:
    """``error`` with a hint appended, from its ``setting`` / ``value`` attributes (never its text):
    for a path that does not exist (``PathNotFoundError``) and is relative, the absolute path it was
    looked for at; for a missing ``pretrained_pth``, the config run that writes it; else, when the
    error is about a top-level config variable (``config_variable``), how to change it
    (``how_to_change``)."""
    key, hints = config_variable(cfg, error), []
    missing = isinstance(error, PathNotFoundError) and isinstance(error.value, (str, os.PathLike))
    if missing and not os.path.isabs(error.value):
        hints.append(f'looked for {os.path.abspath(error.value)}: relative paths are taken from the current folder')
    if missing and key == 'pretrained_pth':
        made_by = _made_by(os.fspath(error.value))
        run_first = f'it is written by `{made_by}`: run that here first, or ' if made_by else ''
        hints.append(f'{run_first}train without it: --cfg-options pretrained_pth=None')
    elif key is not None:
        hints.append(how_to_change(cfg, key))
    if not hints:
        return error
    return type(error)(f'{error} ({"; ".join(hints)})', setting=error.setting, value=error.value)
