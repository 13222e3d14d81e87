"""Load a local CLIP folder (a full ``CLIPModel`` or a ``CLIPVisionModel``) as ``CLIPVisionModel``."""
from __future__ import annotations

import os

from mmllava.builders.folders import dtype_kwargs, iter_weight_shards, read_json, require_dir
from mmllava.errors import MMLLaVAError

WHAT = 'visual_encoder_name_or_path'


def _is_vision_weight(key: str) -> bool:
    # Old checkpoints also store the `position_ids` buffer, which the module now recomputes.
    return key.startswith('vision_model.') and not key.endswith('position_ids')


def load_vision_encoder(path: str | os.PathLike, torch_dtype=None):
    """The vision tower of the CLIP folder ``path``; a full CLIP's text tower is never read."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = require_dir(path, WHAT)
    model_type = read_json(folder / 'config.json', WHAT).get('model_type')
    if model_type not in ('clip', 'clip_vision_model'):
        raise MMLLaVAError(f'{WHAT}: {folder} is a {model_type!r} model, expected a CLIP vision tower')
    # CLIPVisionConfig.from_pretrained picks `vision_config` out of a full CLIP config.
    config = CLIPVisionConfig.from_pretrained(folder)
    config._name_or_path = str(folder)
    state_dict = {}
    for shard in iter_weight_shards(folder, WHAT, keep=_is_vision_weight):
        state_dict.update(shard)
    return CLIPVisionModel.from_pretrained(None, config=config, state_dict=state_dict, **dtype_kwargs(torch_dtype))
