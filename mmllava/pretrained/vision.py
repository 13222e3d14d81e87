"""Load the CLIP vision tower of a local folder as ``CLIPVisionModel``, strictly.

Every key layout real tools write is read (``VISION_PREFIXES``): a full ``CLIPModel`` (openai),
``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` saved by transformers 4.x (keys under
``vision_model.``) or 5.x (``CLIPVisionModel`` unprefixed), and the ``vision_tower`` of a
transformers LLaVA folder (both versions' key forms); safetensors or ``.bin``, sharded or not. The
parts of those folders that are not the vision tower (text tower, projection heads, LLM, projector)
are never read; every other tensor must be a weight of the tower (``mmllava.formats.strict``).
"""
from __future__ import annotations

import os

from transformers import CLIPVisionConfig, CLIPVisionModel

from mmllava.errors import MMLLaVAError, concerning
from mmllava.formats.strict import check_loading_info, check_weights, expected_shapes
from mmllava.paths import require_dir
from mmllava.pretrained.folder_reading import dtype_kwargs, iter_weight_shards, read_json, weight_shapes

WHAT = 'visual_encoder_name_or_path'
# Where the tower's weights sit in each layout, most specific first ('' = transformers 5's unprefixed save).
VISION_PREFIXES = ('model.vision_tower.vision_model.', 'vision_tower.vision_model.', 'model.vision_tower.',
                   'vision_tower.', 'vision_model.', '')
# Parts of a CLIPModel / WithProjection / LLaVA folder beside the vision tower: present, not ours to read.
OTHER_PARTS = ('text_model.', 'text_projection.', 'visual_projection.', 'logit_scale', 'language_model.',
               'model.language_model.', 'multi_modal_projector.', 'model.multi_modal_projector.', 'lm_head.')


def pick_prefix(found: dict, expected: dict, prefixes=VISION_PREFIXES) -> str:
    """The prefix under which ``found`` keys match the most ``expected`` keys (the folder's layout)."""
    def matches(prefix: str) -> int:
        return sum(1 for key in found if key.startswith(prefix) and key[len(prefix):] in expected)

    best = max(prefixes, key=matches)  # ties keep the earlier, more specific prefix
    # Nothing matches: judge every key, so the error lists what the folder holds.
    return best if matches(best) else ''


def select_prefixed(found: dict, prefix: str, other_parts=OTHER_PARTS) -> dict:
    """The keys of the chosen layout, prefix removed: everything under ``prefix`` that is not another
    part of the folder (with the empty prefix, every key outside ``other_parts``)."""
    return {key[len(prefix):]: value for key, value in found.items()
            if key.startswith(prefix) and not (prefix == '' and key.startswith(other_parts))}


def vision_config(folder, what: str = WHAT):
    """The ``CLIPVisionConfig`` of a CLIP folder (full, vision-only) or of a LLaVA folder's tower."""
    config_dict = read_json(folder / 'config.json', what)
    model_type = config_dict.get('model_type')
    if model_type == 'llava':
        vision = config_dict.get('vision_config') or {}
        if vision.get('model_type', 'clip_vision_model') != 'clip_vision_model':
            raise MMLLaVAError(f'{what}: {folder} is a LLaVA folder whose vision tower is '
                               f'{vision.get("model_type")!r}, expected CLIP')
        config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != 'model_type'})
    elif model_type in ('clip', 'clip_vision_model'):
        # CLIPVisionConfig.from_pretrained picks `vision_config` out of a full CLIP config.
        config = CLIPVisionConfig.from_pretrained(folder)
    else:
        raise MMLLaVAError(f'{what}: {folder} is a {model_type!r} model, expected a CLIP vision tower')
    config._name_or_path = str(folder)
    return config


def load_vision_encoder(path: str | os.PathLike, torch_dtype=None):
    """The vision tower of the CLIP (or LLaVA) folder ``path`` as ``CLIPVisionModel``; a missing,
    unused or wrong-shaped weight is an ``MMLLaVAError`` (see the module docstring)."""
    with concerning(WHAT, path):  # what fails inside is about this setting's value
        folder = require_dir(path, WHAT)
        config = vision_config(folder)
        expected = expected_shapes(CLIPVisionModel, config)
        found = weight_shapes(folder, WHAT)
        prefix = pick_prefix(found, expected)
        check_weights(WHAT, folder, expected, select_prefixed(found, prefix), 'vision')
        state_dict = {}
        for shard in iter_weight_shards(folder, WHAT, keep=lambda key: key.startswith(prefix)):
            state_dict.update({k: v for k, v in select_prefixed(shard, prefix).items() if k in expected})
        model, info = CLIPVisionModel.from_pretrained(None, config=config, state_dict=state_dict,
                                                      output_loading_info=True, **dtype_kwargs(torch_dtype))
        check_loading_info(WHAT, folder, info, 'vision', expected)
        return model
