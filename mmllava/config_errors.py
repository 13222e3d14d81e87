"""How a config's mistakes reach the user: every ``dict(type=...)`` checked against what it calls
before anything is built, and an ``MMLLaVAError`` about a config variable's value completed with where
a relative path was looked for and how to change the variable (matched by the error's ``setting`` /
``value`` attributes, never by its text).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path
from typing import Any, Iterable

from mmllava.config import _imported
from mmllava.config_source import shipped_config_dir, shipped_configs
from mmllava.errors import MMLLaVAError, PathNotFoundError


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
