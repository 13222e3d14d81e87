"""Configs: copy them, load them with ``--cfg-options``, build objects from them.

Configs are mmengine pure-Python files in XTuner's five parts. ``--cfg-options`` on a top-level
variable (``llm_name_or_path=/models/x``) re-assigns that variable *in the config source* before it
is executed, so every field derived from it (``model.llm.path``, ``data_path = data_root + ...``)
follows. Dotted keys (``model.freeze_llm=False``) are merged into the loaded config afterwards.
Finding a config, override configs (the tiny ones) and the embedded default's paths are the
source-level part (``mmllava.config_source``); how a config's mistakes are reported is
``mmllava.config_errors``.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from mmllava.errors import MMLLaVAError
from mmllava.config_source import (_base_config, _parse, _reassign, _top_level_assignments, _Value, config_source,
                                   find_config, resolve_embedded_paths)

CONFIG_SUFFIX = '_copy.py'

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
