"""Strict loading: every weight a module expects was read, every tensor read was used, shapes agree.

transformers' ``from_pretrained`` only prints a load report when a checkpoint does not fit and
leaves freshly initialised weights in place; PEFT only warns. A tower trained as random weights
looks like a model that learns nothing, so every loader of mmllava compares the key sets and
shapes itself (``check_weights``) before a module is filled, and a difference is one
``MMLLaVAError`` line naming the setting, the folder, the count and the first keys.

The differences tolerated, all of them, each with its reason (``TOLERATED``):

* a buffer the module recomputes from its config (CLIP ``position_ids``, rotary ``inv_freq``):
  older transformers saved them; the values are a function of the config, never trained;
* ``lm_head.weight`` of a model whose config ties it to the input embeddings: it *is* the
  embedding matrix, so savers may write it or leave it out.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import load_peft_weights

from mmllava.errors import MMLLaVAError

# (pattern, reason): the only keys that may be absent from a file or present without a parameter.
TOLERATED = (
    (re.compile(r'(^|\.)position_ids$'),
     'recomputed buffer: position ids are arange(num_positions); transformers < 4.31 saved them'),
    (re.compile(r'(^|\.)rotary_emb\.inv_freq$'),
     'recomputed buffer: the rotary frequency table follows from rope_theta (old Llama/InternLM2 saves)'),
)
TIED_HEAD = re.compile(r'(^|\.)lm_head\.weight$')
TIED_HEAD_REASON = 'tied head: with tie_word_embeddings the LM head is the input embedding matrix'
# How many keys a message names before the ellipsis.
SHOWN = 3


def is_recomputed_buffer(key: str) -> bool:
    """Whether ``key`` is a buffer the module recomputes (see ``TOLERATED``): read but never used."""
    return any(pattern.search(key) for pattern, _ in TOLERATED)


def _tolerated(key: str, tied: bool) -> bool:
    return is_recomputed_buffer(key) or (tied and bool(TIED_HEAD.search(key)))


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:SHOWN]) + (', …' if len(keys) > SHOWN else '')


def shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a state dict of tensors."""
    return {key: tuple(value.shape) for key, value in state.items()}


def expected_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the state dict ``model_class(config)`` has, built on the meta device
    (no memory, no initialisation) and before any quantization, so a 4-bit model is checked
    against the shapes its checkpoint must have."""
    with torch.device('meta'):
        model = model_class(config)
    return shapes(model.state_dict())


def problems(expected: Mapping[str, tuple], found: Mapping[str, tuple], component: str,
             tied: bool = False) -> list[str]:
    """The differences between the weights a module ``expected`` and those ``found`` in files
    (both ``{key: shape}``), as message parts; empty when the files fit exactly."""
    missing = [k for k in expected if k not in found and not _tolerated(k, tied)]
    unused = [k for k in found if k not in expected and not _tolerated(k, tied)]
    wrong = [k for k in found if k in expected and tuple(found[k]) != tuple(expected[k])]
    required = [k for k in expected if not _tolerated(k, tied)]
    out = []
    if missing:
        out.append(f'{len(missing)} of {len(required)} {component} weights missing ({_names(missing)})')
    if unused:
        out.append(f'{len(unused)} of {len(found)} tensors read unused ({_names(unused)})')
    if wrong:
        first = sorted(wrong)[0]
        out.append(f'{len(wrong)} {component} weights of the wrong shape ({first}: {tuple(found[first])} in the '
                   f'file, the model expects {tuple(expected[first])}{", …" if len(wrong) > 1 else ""})')
    if missing and len(missing) == len(required):
        out[0] += ': key layout not recognised'
    return out


def check_weights(setting: str, source, expected: Mapping[str, tuple], found: Mapping[str, tuple],
                  component: str, tied: bool = False) -> None:
    """Raise the one-line ``MMLLaVAError`` ``SETTING: SOURCE: N of M COMPONENT weights missing (...)``
    (and/or unused, wrong-shaped) unless ``found`` fits ``expected`` up to ``TOLERATED``."""
    found_problems = problems(expected, found, component, tied)
    if found_problems:
        raise MMLLaVAError(f'{setting}: {source}: ' + '; '.join(found_problems))


def check_loading_info(setting: str, source, info: Mapping, component: str, expected_keys: Iterable[str],
                       tied: bool = False) -> None:
    """After ``from_pretrained(..., output_loading_info=True)`` (with ``ignore_mismatched_sizes=True``
    where no check came first): anything transformers reports missing, unexpected or mismatched,
    beyond ``TOLERATED``, is the one-line error. ``expected_keys``: the module's state-dict keys."""
    missing = set(info.get('missing_keys') or ())
    expected = {key: () for key in expected_keys}
    found = {key: () for key in expected if key not in missing}
    found.update({key: () for key in info.get('unexpected_keys') or ()})
    parts = problems(expected, found, component, tied)
    mismatched = [entry for entry in info.get('mismatched_keys') or () if isinstance(entry, (tuple, list))]
    if mismatched:
        key, read, true = sorted(mismatched)[0][:3]
        parts.append(f'{len(mismatched)} {component} weights of the wrong shape ({key}: {tuple(read)} in the file, '
                     f'the model expects {tuple(true)}{", …" if len(mismatched) > 1 else ""})')
    if parts:
        raise MMLLaVAError(f'{setting}: {source}: ' + '; '.join(parts))


def _part(key: str) -> tuple[str, bool]:
    """The part of a multimodal model a trained weight belongs to: its top module (``projector``,
    ``llm``, ``visual_encoder``, ``vision_tower``) and whether it is an adapter (LoRA, PEFT's
    ``modules_to_save``) or the module's own weight."""
    return key.split('.', 1)[0], '.lora_' in key or '.modules_to_save.' in key


def check_trained_parts(setting: str, source, own: Mapping[str, tuple], found: Mapping[str, tuple]) -> None:
    """A checkpoint of trained weights (``pretrained_pth``, ``load_from``, a resumed ``iter_N.pth``)
    may hold any of the model's parts (a pretraining stage's projector alone, LoRA adapters, an
    unfrozen tower), but each part it holds must be complete, known and of the right shapes.

    ``own`` are the ``{key: shape}`` of the model's full state dict, ``found`` the checkpoint's."""
    if not found:
        raise MMLLaVAError(f'{setting}: {source}: holds no weights')
    present = {_part(key) for key in found}
    expected = {key: shape for key, shape in own.items() if _part(key) in present}
    check_weights(setting, source, expected, found, 'trained')


def load_peft_adapter(model, adapter, setting: str):
    """``model`` wrapped by the PEFT adapter folder ``adapter``, strictly: the adapter file must hold
    exactly the tensors the adapter's config makes PEFT create, with their shapes (PEFT itself
    only warns about missing adapter weights and leaves them at their initial values)."""
    try:
        config = PeftConfig.from_pretrained(str(adapter))
        weights = load_peft_weights(str(adapter), device='cpu')
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise MMLLaVAError(f'{setting}: {adapter}: not a readable PEFT adapter: {str(e).splitlines()[0]}') from None
    config.inference_mode = True
    try:
        peft_model = PeftModel(model, config)
    except (ValueError, KeyError, RuntimeError) as e:
        raise MMLLaVAError(f'{setting}: {adapter}: cannot apply the adapter: {str(e).splitlines()[0]}') from None
    check_weights(setting, adapter, shapes(get_peft_model_state_dict(peft_model)), shapes(weights), 'adapter')
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = list(getattr(result, 'unexpected_keys', None) or ())
    if unexpected:  # the key sets were equal above; PEFT must have used every tensor
        raise MMLLaVAError(f'{setting}: {adapter}: {len(unexpected)} adapter tensors unused ({_names(unexpected)})')
    return peft_model.eval()
