"""Our LLaVA -> XTuner's LLaVA export layout (``--save-format xtuner``, the default), what
``mmllava chat LLM --visual-encoder VE --llava DIR`` reads::

    projector/                config.json (XTuner's ProjectorConfig fields + visual_select_layer,
                              prompt_template) and model.safetensors (keys model.{0,2}.{weight,bias})
    llm_adapter/              PEFT adapter (adapter_config.json + adapter_model.safetensors), LoRA runs
    visual_encoder_adapter/   PEFT adapter of the vision tower, when it had LoRA
    llm/                      the whole LLM + tokenizer, when it was fully trained
    visual_encoder/           the whole vision tower + image processor, when it was fully trained
    xtuner_config.py          the training config (with --cfg-options applied)

LoRA weights are saved unmerged (a few MB; QLoRA adapters apply to the 4-bit base as trained).
The adapters name Llama modules (``q_proj``...) even for InternLM2, which is loaded as Llama.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmllava.convert.legacy import dtype_name, write_json
from mmllava.convert.llm_and_vision_folders import save_llm_folder, save_vision_folder
from mmllava.convert.merge import merge_lora
from mmllava.convert.shards import save_safetensors

PROJECTOR_DIR, LLM_ADAPTER_DIR, VISION_ADAPTER_DIR = 'projector', 'llm_adapter', 'visual_encoder_adapter'
LLM_DIR, VISION_DIR, CONFIG_FILE = 'llm', 'visual_encoder', 'xtuner_config.py'


def save_projector(model, save_dir: Path, dtype: torch.dtype, template: str) -> Path:
    """``projector/`` as XTuner's ``ProjectorModel.save_pretrained`` writes it (plus our two fields)."""
    folder = Path(save_dir) / PROJECTOR_DIR
    projector = model.projector
    save_safetensors(projector.state_dict(prefix='model.'), folder, dtype)
    write_json(folder / 'config.json', {
        'architectures': ['ProjectorModel'],
        'model_type': 'projector',
        'visual_hidden_size': projector[0].in_features,
        'llm_hidden_size': projector[0].out_features,
        'depth': projector.depth,
        'hidden_act': 'gelu',
        'bias': projector[0].bias is not None,
        'torch_dtype': dtype_name(dtype),
        'visual_select_layer': model.visual_select_layer,
        'prompt_template': template,
    })
    return folder


def _save_adapter(peft_model, folder: Path, base_path) -> None:
    """A PEFT adapter folder naming its base model (InternLM2 loaded as Llama has no name of its own)."""
    for config in peft_model.peft_config.values():
        if config.base_model_name_or_path in (None, 'None') and base_path:
            config.base_model_name_or_path = str(base_path)
    peft_model.save_pretrained(str(folder))


def export_xtuner(model, cfg, tokenizer, image_processor, template: str, save_dir, dtype: torch.dtype,
                  max_shard_size: str | int = '2GB') -> Path:
    """Write the parts of ``model`` (an unmerged :class:`~mmllava.models.LLaVAModel`) that were trained."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    print('Saving projector', flush=True)
    save_projector(model, save_dir, dtype, template)
    if model.use_llm_lora:
        print('Saving LLM adapter', flush=True)
        _save_adapter(model.llm, save_dir / LLM_ADAPTER_DIR, cfg.get('llm_name_or_path'))
    elif not model.freeze_llm:
        print('Saving LLM', flush=True)
        save_llm_folder(merge_lora(model.llm, dtype), tokenizer, save_dir / LLM_DIR, dtype, max_shard_size)
    if model.use_visual_encoder_lora:
        print('Saving visual encoder adapter', flush=True)
        _save_adapter(model.visual_encoder, save_dir / VISION_ADAPTER_DIR, cfg.get('visual_encoder_name_or_path'))
    elif not model.freeze_visual_encoder:
        print('Saving visual encoder', flush=True)
        save_vision_folder(model.visual_encoder, image_processor, save_dir / VISION_DIR, dtype, max_shard_size)
    cfg.dump(str(save_dir / CONFIG_FILE))
    return save_dir
