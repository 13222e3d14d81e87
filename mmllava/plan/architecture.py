"""Model architectures for the plan: a folder's ``config.json``, or the shipped description of the
real model a config names when the folder is not on this machine, built on the meta device.

The meta modules carry every parameter's name, shape and (configured) dtype and no storage, so a
Llama-3-8B costs milliseconds. Quantisation and LoRA are not applied to them (bitsandbytes
cannot quantise meta tensors): ``mmllava.plan.parameters`` accounts for both from the module tree.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, InternVLVisionModel
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from mmllava.errors import MMLLaVAError
from mmllava.formats.internlm2 import internlm2_config_to_llama
from mmllava.formats.internvl_native import official_config_to_native
from mmllava.pretrained.llm import is_internlm2

ARCHITECTURES = Path(__file__).with_name('architectures')
# Shipped descriptions, matched on the folder name a config points at (lower case, '-' and '.' as '_').
KNOWN = (('internvl2_2b', 'internvl2_2b'), ('internlm2_chat_1_8b', 'internlm2_chat_1_8b'),
         ('llama_3_8b_instruct', 'llama3_8b_instruct'), ('qwen2_5_3b_instruct', 'qwen2_5_3b_instruct'),
         ('clip_vit_large_patch14_336', 'clip_vit_large_p14_336'))


@dataclass
class Architecture:
    """A ``config.json`` dict and where it came from (``shipped`` when the folder was not found)."""

    config: dict
    source: str
    shipped: bool


def read_architecture(path: str | None, what: str) -> Architecture:
    """The ``config.json`` of the folder ``path`` (config setting ``what``), else the shipped
    description of the model its name says; an ``MMLLaVAError`` when neither exists."""
    folder = Path(str(path)) if path else None
    if folder is not None and (folder / 'config.json').is_file():
        try:
            return Architecture(json.loads((folder / 'config.json').read_text(encoding='utf-8')), str(folder), False)
        except ValueError as e:
            raise MMLLaVAError(f'{what}: cannot read {folder}/config.json: {e}') from None
    zoo = os.environ.get('MMLLAVA_TINY_ZOO')
    if folder is not None and zoo and (Path(zoo) / folder.name / 'config.json').is_file():
        # a tiny config run from another folder: the prebuilt tiny zoo holds the same model
        found = read_architecture(str(Path(zoo) / folder.name), what)
        return Architecture(found.config, f'{path} not found: {found.source} (MMLLAVA_TINY_ZOO)', False)
    name = str(path).lower().replace('-', '_').replace('.', '_').rstrip('/')
    for fragment, shipped in KNOWN:
        if name.endswith(fragment) or name.endswith(fragment.replace('llama_3', 'llama3')):
            config = json.loads((ARCHITECTURES / f'{shipped}.json').read_text(encoding='utf-8'))
            return Architecture(config, f'{path} not found: shipped description {shipped}.json', True)
    raise MMLLaVAError(f'{what}: {path} does not exist and is none of the models mmllava describes '
                       f'({", ".join(s for _, s in KNOWN)}); point it at a folder with a config.json')


def meta_llm(config: dict):
    """The causal LM of a ``config.json`` dict on the meta device (InternLM2 as ``LlamaForCausalLM``,
    as ``mmllava.pretrained.llm`` loads it)."""
    config = {k: v for k, v in config.items() if not k.startswith('_')}
    model_config = (internlm2_config_to_llama(config) if is_internlm2(config)
                    else AutoConfig.for_model(**{k: v for k, v in config.items() if k not in ('architectures',)}))
    with torch.device('meta'):
        return AutoModelForCausalLM.from_config(model_config)


def meta_clip(config: dict):
    """The CLIP vision tower of a CLIP (or CLIP vision) ``config.json`` dict on the meta device."""
    vision = config.get('vision_config', config) if config.get('model_type') == 'clip' else config
    vision = {k: v for k, v in vision.items() if not k.startswith('_') and k != 'model_type'}
    with torch.device('meta'):
        return CLIPVisionModel(CLIPVisionConfig(**vision))


def meta_internvl(official: dict) -> dict[str, Any]:
    """``vision``, ``projector``, ``llm`` (meta modules) and the native ``config`` of an official
    InternVL2 ``config.json`` dict, as ``mmllava.pretrained.internvl_folder`` loads it."""
    config = official_config_to_native({k: v for k, v in official.items() if not k.startswith('_')})
    with torch.device('meta'):
        vision = InternVLVisionModel(config.vision_config)
        projector = InternVLMultiModalProjector(config)
        llm = AutoModelForCausalLM.from_config(config.text_config)
    return {'vision': vision, 'projector': projector, 'llm': llm, 'config': config}
