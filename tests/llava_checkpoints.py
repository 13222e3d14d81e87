"""Test helpers for convert/chat/build tests: a trained-looking ``iter_N.pth`` from the tiny zoo.

The checkpoint imitates ``mmllava train``'s (``{'state_dict': trained weights, 'meta': {}}``); the
trained weights are perturbed so LoRA adapters are non-zero and merges are really exercised.
"""
from __future__ import annotations

from pathlib import Path

import torch

FINETUNE = 'llava_tiny_internlm2_chat_qlora_clip_finetune'
PRETRAIN = 'llava_tiny_internlm2_chat_clip_pretrain'


def cfg_options(zoo: dict, qlora: bool = True, llm: str = 'internlm2_chat') -> list[str]:
    """``--cfg-options`` pointing a tiny config at the zoo's ``llm`` (and turning QLoRA into LoRA)."""
    options = [f'llm_name_or_path={zoo[llm]}', f'visual_encoder_name_or_path={zoo["clip_vit"]}']
    return options + ([] if qlora else ['model.llm.quantization_config=None'])


def make_checkpoint(zoo: dict, path: Path, config: str = FINETUNE, qlora: bool = True, scale: float = 0.05,
                    llm: str = 'internlm2_chat'):
    """Build the config's model (on the zoo's ``llm``), perturb its trained weights, save them as
    ``path``; returns the model."""
    from mmllava.config import build, load_config, parse_cfg_options

    cfg = load_config(config, parse_cfg_options(cfg_options(zoo, qlora, llm)))
    cfg.model.pretrained_pth = None
    model = build(cfg.model).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p += scale * torch.randn(p.shape, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model


def sample_image():
    """A small non-square RGB image with some structure (so pixels matter)."""
    from PIL import Image, ImageDraw

    img = Image.new('RGB', (90, 70), (30, 60, 200))
    ImageDraw.Draw(img).ellipse((20, 10, 70, 60), fill=(220, 40, 40))
    return img
