"""Chatting with an official InternVL folder (the original checkpoint or our ``official`` export).

Each image is tiled exactly as in training (``InternVLImageProcessor``) and enters the prompt as
``<img>`` + ``tokens_per_tile x tiles`` image positions + ``</img>``; the prompt template is the one
the export recorded (``prompt_template``), else ``internlm2_chat`` for InternVL's ``internlm2-chat``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mmllava.chat.loader import ChatModel, _template, chat_model_for
from mmllava.constants import IMAGE_TOKEN_INDEX

# InternVL's conversation template names -> ours.
_OFFICIAL_TEMPLATES = {'internlm2-chat': 'internlm2_chat'}


class InternVLChatModel(ChatModel):
    """A :class:`~mmllava.chat.loader.ChatModel` whose images are a variable number of tiles."""

    def pixel_values(self, image) -> torch.Tensor:
        """A PIL image -> its tiles ``[tiles, 3, S, S]`` in the vision tower's dtype, on the model's device."""
        dtype = next(self.model.vision_tower.parameters()).dtype
        return self.image_processor(image).to(self.device, dtype)

    def prompt_ids(self, text: str, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``[1, L]`` ids: each ``<image>`` -> ``<img>`` + its tiles' positions + ``</img>``."""
        from mmllava.data.encode import bos_ids, tokenize_with_images
        from mmllava.data.internvl_dataset import image_token_ids, wrap_image_runs

        start_id, end_id, _ = image_token_ids(self.tokenizer)
        tiles = iter(len(pixels) for pixels in images)
        ids = []
        for token in bos_ids(self.tokenizer, self.template) + tokenize_with_images(text, self.tokenizer, 1):
            # Two more positions than features: wrap_image_runs turns them into <img> and </img>.
            positions = next(tiles) * self.image_processor.tokens_per_tile + 2 if token == IMAGE_TOKEN_INDEX else 0
            ids.extend([IMAGE_TOKEN_INDEX] * positions if positions else [token])
        return torch.tensor([wrap_image_runs(ids, start_id, end_id)], device=self.device)


def load_internvl_chat(path: Path, template: str | None, dtype, quantization) -> InternVLChatModel:
    """An official InternVL folder as an :class:`InternVLChatModel` (frozen ``InternVLModel``)."""
    from mmllava.builders import load_tokenizer
    from mmllava.builders.internvl import load_internvl, load_internvl_image_processor
    from mmllava.models import InternVLModel

    model = InternVLModel(load_internvl(path, torch_dtype=dtype, quantization_config=quantization),
                          use_activation_checkpointing=False)
    stored = model.official_config.get('prompt_template') or _OFFICIAL_TEMPLATES.get(
        model.official_config.get('template'))
    return chat_model_for(model.eval(), load_tokenizer(path), _template(template, stored, path),
                          load_internvl_image_processor(path))
