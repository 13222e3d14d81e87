"""Chatting with an official InternVL folder (the original checkpoint or our ``official`` export).

Each image is tiled exactly as in training (``InternVLImageProcessor``) and enters the prompt as
``<img>`` + ``tokens_per_tile x tiles`` image positions + ``</img>``; the prompt template is the one
the export recorded (``prompt_template``), else ``internlm2_chat`` for InternVL's ``internlm2-chat``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import InternVLForConditionalGeneration

from mmllava.chat.loader import OUR_MODEL_KINDS, ChatModel, _template, chat_model_for
from mmllava.constants import IMAGE_TOKEN_INDEX
from mmllava.data.encode import bos_ids, tokenize_with_images
from mmllava.data.internvl_dataset import image_token_ids, wrap_image_runs
from mmllava.data.internvl_image import InternVLImageProcessor
from mmllava.errors import MMLLaVAError
from mmllava.models import InternVLModel
from mmllava.pretrained import load_tokenizer
from mmllava.pretrained.folder_reading import read_json
from mmllava.pretrained.internvl_folder import load_internvl, load_internvl_image_processor

# InternVL's conversation template names -> ours.
_OFFICIAL_TEMPLATES = {'internlm2-chat': 'internlm2_chat'}


class InternVLChatModel(ChatModel):
    """A :class:`~mmllava.chat.loader.ChatModel` whose images are a variable number of tiles."""

    def pixel_values(self, image) -> torch.Tensor:
        """A PIL image -> its tiles ``[tiles, 3, S, S]`` in the vision tower's dtype, on the model's device."""
        if self.image_processor is None:
            raise MMLLaVAError('this model was loaded without an image processor: it cannot take images')
        # Ours keeps the tower at .vision_tower; transformers' InternVLForConditionalGeneration at .model.vision_tower.
        vision = self.model.vision_tower if self.kind in OUR_MODEL_KINDS else self.model.model.vision_tower
        return self.image_processor(image).to(self.device, next(vision.parameters()).dtype)

    def prompt_ids(self, text: str, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``[1, L]`` ids: each ``<image>`` -> ``<img>`` + its tiles' positions + ``</img>``."""
        start_id, end_id, _ = image_token_ids(self.tokenizer)
        tiles = iter(len(pixels) for pixels in images)
        ids = []
        for token in bos_ids(self.tokenizer, self.template) + tokenize_with_images(text, self.tokenizer, 1):
            # Two more positions than features: wrap_image_runs turns them into <img> and </img>.
            positions = next(tiles) * self.image_processor.tokens_per_tile + 2 if token == IMAGE_TOKEN_INDEX else 0
            ids.extend([IMAGE_TOKEN_INDEX] * positions if positions else [token])
        ids = wrap_image_runs(ids, start_id, end_id)
        if self.image_token_id is not None:  # transformers' model: <IMG_CONTEXT> marks the image positions
            ids = [self.image_token_id if i == IMAGE_TOKEN_INDEX else i for i in ids]
        return torch.tensor([ids], device=self.device)


def load_internvl_chat(path: Path, template: str | None, dtype, quantization) -> InternVLChatModel:
    """An official InternVL folder as an :class:`InternVLChatModel` (frozen ``InternVLModel``)."""
    model = InternVLModel(load_internvl(path, torch_dtype=dtype, quantization_config=quantization),
                          use_activation_checkpointing=False)
    stored = model.official_config.get('prompt_template') or _OFFICIAL_TEMPLATES.get(
        model.official_config.get('template'))
    return chat_model_for(model.eval(), load_tokenizer(path), _template(template, stored, path),
                          load_internvl_image_processor(path))


def load_hf_internvl_chat(path: Path, template: str | None, dtype, quantization, device: str) -> InternVLChatModel:
    """A transformers ``InternVLForConditionalGeneration`` folder (our ``huggingface`` export) as an
    :class:`InternVLChatModel`: transformers' model, tiled by our ``InternVLImageProcessor`` with the
    settings of its ``preprocessor_config.json`` (exactly as in training; transformers' own tiling can
    pick another grid), the image positions given as ``<IMG_CONTEXT>``."""
    config = read_json(path / 'config.json', 'model')
    settings = read_json(path / 'preprocessor_config.json', 'model') if (
        path / 'preprocessor_config.json').is_file() else {}
    vision_size = config.get('vision_config', {}).get('image_size', 448)  # [H, W] in native configs
    size = settings.get('size', {}).get('height') or (vision_size[0] if isinstance(vision_size, list) else vision_size)
    extra = {'quantization_config': quantization, 'device_map': {'': device}} if quantization else {}
    model = InternVLForConditionalGeneration.from_pretrained(str(path), dtype=dtype, **extra)
    normalize = {k: settings[k] for k in ('image_mean', 'image_std') if k in settings}
    image_processor = InternVLImageProcessor(
        image_size=int(size), min_num=int(settings.get('min_patches', 1)), max_num=int(settings.get('max_patches', 12)),
        dynamic=bool(settings.get('crop_to_patches', True)), tokens_per_tile=int(config['image_seq_length']),
        **normalize)
    return InternVLChatModel('hf_internvl', model.eval(), load_tokenizer(path),
                             _template(template, config.get('prompt_template'), path), image_processor,
                             image_processor.tokens_per_tile, image_token_id=model.config.image_token_id)
