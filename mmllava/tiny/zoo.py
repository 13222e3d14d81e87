"""Tiny models in the real on-disk formats of the checkpoints the seeds use, deterministic from a seed.

Configs are written by hand with the field names of the real folders (as transformers 4.x wrote
them: ``rope_theta``, ``torch_dtype``), not by ``save_pretrained``, so the tiny folders look like what
users download. Weights are drawn from one ``torch.Generator`` per model (seeded from ``seed`` and the
model's name, so building a subset gives the same bytes) and saved as float32 safetensors.
"""
from __future__ import annotations

import math
import shutil
import zlib
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, CLIPConfig, CLIPModel

from mmllava.tiny import tokenizers as tiny_tok
from mmllava.tiny.remote_code import FILES as REMOTE_CODE_FILES, write_remote_code
from mmllava.tiny.tokenizers import write_json

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
INTERNLM2_AUTO_MAP = {
    'AutoConfig': 'configuration_internlm2.InternLM2Config',
    'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM',
    'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
}
INTERNVL_AUTO_MAP = {
    'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
    'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
    'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel',
}
# Tiny LLM shape shared by the families: GQA with 2 queries per KV head so packing/splitting is exercised.
_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# The same with head_dim 64, for engines whose attention kernels need head_dim >= 32 (vLLM on CPU).
HEAD_DIM_64_LLM = dict(_LLM, hidden_size=256, intermediate_size=512)


def _random_weights(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random float32 tensors in ``shapes`` order (see :func:`random_tensor`)."""
    return {name: random_tensor(name, shape, gen) for name, shape in shapes.items()}


def random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A random float32 tensor for the parameter ``name``: scales near 1, matrices N(0, 1/fan_in), biases N(0, 0.02).

    Scales are the 1-D ``weight`` of norm layers (linear, conv and embedding weights have 2+ dims) and
    InternViT's layer scales; they are not exactly 1 so that a misplaced norm changes the output.
    Matrices get the variance of a trained network rather than the 0.02 of a fresh init: with a hidden
    size of 64, a 0.02 LM head bounds every logit near +-1, so a frozen tiny LLM could never become
    confident and LoRA fine-tuning would plateau far above what it does on a real checkpoint."""
    noise = torch.randn(shape, generator=gen)
    if (len(shape) == 1 and name.endswith('.weight')) or name.rsplit('.', 1)[-1] in ('ls1', 'ls2'):
        return noise.mul_(0.1).add_(1.0)
    if len(shape) >= 2:
        return noise.div_(math.sqrt(math.prod(shape[1:])))
    return noise.mul_(0.02)


def _save_weights(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / 'model.safetensors'),
              metadata={'format': 'pt'})


def native_shapes(config, model_class, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a transformers model built on the meta device (no memory, no init cost)."""
    with torch.device('meta'):
        model = model_class(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False) if name not in skip}


# ---------------------------------------------------------------------------------------------- InternLM2


def internlm2_config(vocab_size: int, ids: dict[str, int], llm_shape: dict = _LLM) -> dict:
    """``config.json`` of the tiny internlm2-chat (field names and values of the real 1.8B, tiny sizes)."""
    return {
        'architectures': ['InternLM2ForCausalLM'],
        'attn_implementation': 'eager',
        'auto_map': INTERNLM2_AUTO_MAP,
        'bias': False,
        'bos_token_id': ids['<s>'],
        'eos_token_id': ids['</s>'],
        'hidden_act': 'silu',
        **llm_shape,
        'initializer_range': 0.02,
        'max_position_embeddings': 32768,
        'model_type': 'internlm2',
        'pad_token_id': ids['</s>'],
        'rms_norm_eps': 1e-05,
        'rope_scaling': {'type': 'dynamic', 'factor': 2.0},
        'rope_theta': 1000000,
        'tie_word_embeddings': False,
        'torch_dtype': 'float32',
        'transformers_version': '4.37.1',
        'use_cache': True,
        'vocab_size': vocab_size,
    }


def internlm2_shapes(cfg: dict, prefix: str = '') -> dict[str, tuple[int, ...]]:
    """InternLM2 parameter names (packed ``wqkv``) and shapes, under ``prefix`` (e.g. ``language_model.``)."""
    hidden, inter = cfg['hidden_size'], cfg['intermediate_size']
    head_dim = hidden // cfg['num_attention_heads']
    qkv_rows = (cfg['num_attention_heads'] + 2 * cfg['num_key_value_heads']) * head_dim
    shapes = {f'{prefix}model.tok_embeddings.weight': (cfg['vocab_size'], hidden)}
    for i in range(cfg['num_hidden_layers']):
        layer = f'{prefix}model.layers.{i}.'
        shapes.update({
            layer + 'attention.wqkv.weight': (qkv_rows, hidden),
            layer + 'attention.wo.weight': (hidden, cfg['num_attention_heads'] * head_dim),
            layer + 'feed_forward.w1.weight': (inter, hidden),
            layer + 'feed_forward.w3.weight': (inter, hidden),
            layer + 'feed_forward.w2.weight': (hidden, inter),
            layer + 'attention_norm.weight': (hidden,),
            layer + 'ffn_norm.weight': (hidden,),
        })
    shapes[f'{prefix}model.norm.weight'] = (hidden,)
    shapes[f'{prefix}output.weight'] = (cfg['vocab_size'], hidden)
    return shapes


def _internlm2_chat(folder: Path, gen: torch.Generator) -> None:
    vocab = tiny_tok.write_internlm2_tokenizer(folder)
    cfg = internlm2_config(vocab.size, vocab.ids)
    write_json(folder / 'config.json', cfg)
    write_json(folder / 'generation_config.json', {
        'bos_token_id': vocab.ids['<s>'], 'eos_token_id': [vocab.ids['</s>'], vocab.ids['<|im_end|>']],
        'pad_token_id': vocab.ids['</s>']})
    _save_weights(folder, _random_weights(internlm2_shapes(cfg), gen))


# ------------------------------------------------------------------------------------ Llama-3 and Qwen2.5


def _native_llm(folder: Path, gen: torch.Generator, cfg: dict, generation: dict) -> None:
    """Write a transformers-native causal LM folder from a hand-written ``config.json`` dict."""
    write_json(folder / 'config.json', cfg)
    write_json(folder / 'generation_config.json', generation)
    config = AutoConfig.from_pretrained(folder)
    # Tied heads are not stored, as in the real tied checkpoints (Qwen2.5 up to 3B).
    skip = ('lm_head.weight',) if cfg['tie_word_embeddings'] else ()
    _save_weights(folder, _random_weights(native_shapes(config, AutoModelForCausalLM.from_config, skip), gen))


def _llama3_instruct(folder: Path, gen: torch.Generator, llm_shape: dict = _LLM) -> None:
    vocab = tiny_tok.write_llama3_tokenizer(folder)
    bos, eos, eot = (vocab.ids[t] for t in ('<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>'))
    cfg = {
        'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'attention_dropout': 0.0,
        'bos_token_id': bos, 'eos_token_id': eot, 'hidden_act': 'silu', **llm_shape, 'initializer_range': 0.02,
        'max_position_embeddings': 8192, 'mlp_bias': False, 'model_type': 'llama', 'pretraining_tp': 1,
        'rms_norm_eps': 1e-05, 'rope_scaling': None, 'rope_theta': 500000.0, 'tie_word_embeddings': False,
        'torch_dtype': 'float32', 'transformers_version': '4.40.0.dev0', 'use_cache': True,
        'vocab_size': vocab.size,
    }
    generation = {'bos_token_id': bos, 'eos_token_id': [eos, eot], 'do_sample': True, 'temperature': 0.6,
                  'top_p': 0.9, 'max_length': 4096}
    _native_llm(folder, gen, cfg, generation)


def _qwen2_5_instruct(folder: Path, gen: torch.Generator) -> None:
    vocab = tiny_tok.write_qwen2_tokenizer(folder)
    endoftext, im_end = vocab.ids['<|endoftext|>'], vocab.ids['<|im_end|>']
    cfg = {
        'architectures': ['Qwen2ForCausalLM'], 'attention_dropout': 0.0, 'bos_token_id': endoftext,
        'eos_token_id': im_end, 'hidden_act': 'silu', **_LLM, 'initializer_range': 0.02,
        'max_position_embeddings': 32768, 'max_window_layers': 2, 'model_type': 'qwen2', 'rms_norm_eps': 1e-06,
        'rope_theta': 1000000.0, 'sliding_window': 32768, 'tie_word_embeddings': True, 'torch_dtype': 'float32',
        'transformers_version': '4.43.1', 'use_cache': True, 'use_sliding_window': False,
        # Like the real checkpoints, the embedding has more rows than the tokenizer has tokens.
        'vocab_size': -(-vocab.size // 64) * 64,
    }
    generation = {'bos_token_id': endoftext, 'pad_token_id': endoftext, 'do_sample': True,
                  'eos_token_id': [im_end, endoftext], 'repetition_penalty': 1.05, 'temperature': 0.7,
                  'top_p': 0.8, 'top_k': 20}
    _native_llm(folder, gen, cfg, generation)


# ------------------------------------------------------------------------------------------------- CLIP


def _clip_vit(folder: Path, gen: torch.Generator) -> None:
    image_size = 64
    cfg = {
        'architectures': ['CLIPModel'], 'initializer_factor': 1.0, 'logit_scale_init_value': 2.6592,
        'model_type': 'clip', 'projection_dim': 32,
        'text_config': {
            'hidden_size': 32, 'intermediate_size': 64, 'num_attention_heads': 2, 'num_hidden_layers': 1,
            'max_position_embeddings': 77, 'vocab_size': 128, 'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-05,
            'projection_dim': 32, 'bos_token_id': 0, 'eos_token_id': 2, 'pad_token_id': 1,
            'model_type': 'clip_text_model'},
        'vision_config': {
            'hidden_size': 64, 'intermediate_size': 256, 'num_attention_heads': 4, 'num_hidden_layers': 3,
            'image_size': image_size, 'patch_size': 8, 'num_channels': 3, 'hidden_act': 'quick_gelu',
            'layer_norm_eps': 1e-05, 'projection_dim': 32, 'model_type': 'clip_vision_model'},
        'torch_dtype': 'float32', 'transformers_version': '4.21.3',
    }
    write_json(folder / 'config.json', cfg)
    write_json(folder / 'preprocessor_config.json', {
        'crop_size': {'height': image_size, 'width': image_size}, 'do_center_crop': True, 'do_convert_rgb': True,
        'do_normalize': True, 'do_rescale': True, 'do_resize': True, 'feature_extractor_type': 'CLIPFeatureExtractor',
        'image_mean': OPENAI_CLIP_MEAN, 'image_processor_type': 'CLIPImageProcessor', 'image_std': OPENAI_CLIP_STD,
        'resample': 3, 'rescale_factor': 1 / 255, 'size': {'shortest_edge': image_size}})
    weights = _random_weights(native_shapes(CLIPConfig.from_dict(cfg), CLIPModel), gen)
    weights['logit_scale'] = torch.tensor(cfg['logit_scale_init_value'])
    _save_weights(folder, weights)


# ---------------------------------------------------------------------------------------- InternVL2 (official)


def _internvit_shapes(vcfg: dict) -> dict[str, tuple[int, ...]]:
    c, patch = vcfg['hidden_size'], vcfg['patch_size']
    num_positions = (vcfg['image_size'] // patch) ** 2 + 1
    shapes = {
        'vision_model.embeddings.class_embedding': (1, 1, c),
        'vision_model.embeddings.patch_embedding.weight': (c, vcfg['num_channels'], patch, patch),
        'vision_model.embeddings.patch_embedding.bias': (c,),
        'vision_model.embeddings.position_embedding': (1, num_positions, c),
    }
    linears = {'attn.qkv': (3 * c, c), 'attn.proj': (c, c), 'mlp.fc1': (vcfg['intermediate_size'], c),
               'mlp.fc2': (c, vcfg['intermediate_size'])}
    for i in range(vcfg['num_hidden_layers']):
        layer = f'vision_model.encoder.layers.{i}.'
        for name, (rows, cols) in linears.items():
            shapes.update({f'{layer}{name}.weight': (rows, cols), f'{layer}{name}.bias': (rows,)})
        for norm in ('norm1', 'norm2'):
            shapes.update({f'{layer}{norm}.weight': (c,), f'{layer}{norm}.bias': (c,)})
        shapes.update({layer + 'ls1': (c,), layer + 'ls2': (c,)})
    return shapes


def _internvl2_official(folder: Path, gen: torch.Generator, llm_shape: dict = _LLM) -> None:
    vocab = tiny_tok.write_internlm2_tokenizer(folder, added_tokens=tiny_tok.INTERNVL2_TOKENS)
    llm_cfg = internlm2_config(vocab.size, vocab.ids, llm_shape)
    llm_cfg['_name_or_path'] = 'internlm/internlm2-chat-1_8b'
    llm_cfg['attn_implementation'] = 'flash_attention_2'
    vision_cfg = {
        'architectures': ['InternVisionModel'], 'attention_dropout': 0.0, 'drop_path_rate': 0.0, 'dropout': 0.0,
        'hidden_act': 'gelu', 'hidden_size': 32, 'image_size': 56, 'initializer_factor': 1.0,
        'initializer_range': 0.02, 'intermediate_size': 128, 'layer_norm_eps': 1e-06, 'model_type': 'intern_vit_6b',
        'norm_type': 'layer_norm', 'num_attention_heads': 2, 'num_channels': 3, 'num_hidden_layers': 2,
        'patch_size': 7, 'qk_normalization': False, 'qkv_bias': True, 'torch_dtype': 'float32',
        'use_flash_attn': True,
    }
    write_json(folder / 'config.json', {
        '_commit_hash': None, 'architectures': ['InternVLChatModel'], 'auto_map': INTERNVL_AUTO_MAP,
        'downsample_ratio': 0.5, 'dynamic_image_size': True, 'force_image_size': vision_cfg['image_size'],
        'llm_config': llm_cfg, 'max_dynamic_patch': 6, 'min_dynamic_patch': 1, 'model_type': 'internvl_chat',
        'pad2square': False, 'ps_version': 'v2', 'select_layer': -1, 'template': 'internlm2-chat',
        'torch_dtype': 'float32', 'use_backbone_lora': 0, 'use_llm_lora': 0, 'use_thumbnail': True,
        'vision_config': vision_cfg,
    })
    write_json(folder / 'generation_config.json', {
        'bos_token_id': vocab.ids['<s>'], 'eos_token_id': [vocab.ids['</s>'], vocab.ids['<|im_end|>']]})
    # The files auto_map names (config.json, tokenizer_config.json): our own small implementations, so
    # the folder, and official exports of it, are complete for trust_remote_code readers.
    write_remote_code(folder)
    # Projector: LayerNorm over the pixel-shuffled 4 x vit_hidden features, Linear, GELU, Linear.
    shuffled, llm_hidden = 4 * vision_cfg['hidden_size'], llm_cfg['hidden_size']
    shapes = {**_internvit_shapes(vision_cfg),
              'mlp1.0.weight': (shuffled,), 'mlp1.0.bias': (shuffled,),
              'mlp1.1.weight': (llm_hidden, shuffled), 'mlp1.1.bias': (llm_hidden,),
              'mlp1.3.weight': (llm_hidden, llm_hidden), 'mlp1.3.bias': (llm_hidden,),
              **internlm2_shapes(llm_cfg, prefix='language_model.')}
    _save_weights(folder, _random_weights(shapes, gen))


BUILDERS: dict[str, Callable[[Path, torch.Generator], None]] = {
    'internlm2_chat': _internlm2_chat,
    'llama3_instruct': _llama3_instruct,
    'qwen2_5_instruct': _qwen2_5_instruct,
    'clip_vit': _clip_vit,
    'internvl2_official': _internvl2_official,
}
ZOO_NAMES = tuple(BUILDERS)


# Builders that take another LLM shape (``llm_shape``), for the head_dim-64 variants.
_SHAPED = ('llama3_instruct', 'internvl2_official')


def is_built(folder: str | Path) -> bool:
    """Whether ``folder`` holds a whole tiny model of this version (weights, and the remote-code
    files of the official InternVL2 folder, which older zoos lack)."""
    folder = Path(folder)
    remote = [folder / name for name in REMOTE_CODE_FILES] if folder.name == 'internvl2_official' else []
    return (folder / 'model.safetensors').is_file() and all(path.is_file() for path in remote)


def build_tiny_zoo(out_dir: str | Path, seed: int = 0, names: list[str] | None = None,
                   llm_shape: dict | None = None) -> dict[str, Path]:
    """Build the tiny models ``names`` (default: all of :data:`ZOO_NAMES`) under ``out_dir/<name>``.

    Same seed, same bytes. An existing model folder is replaced. Returns ``{name: folder}``.
    ``llm_shape`` (e.g. :data:`HEAD_DIM_64_LLM`) widens the LLM of ``llama3_instruct`` and
    ``internvl2_official``; the default shape gives the zoo's usual bytes.
    """
    if llm_shape is not None and set(names or ZOO_NAMES) - set(_SHAPED):
        raise ValueError(f'llm_shape applies only to {list(_SHAPED)}')
    unknown = sorted(set(names or ()) - set(BUILDERS))
    if unknown:
        raise ValueError(f'unknown tiny model(s) {unknown}; known: {list(ZOO_NAMES)}')
    out_dir = Path(out_dir)
    paths = {}
    for name in names or ZOO_NAMES:
        folder = out_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        BUILDERS[name](folder, gen, **({'llm_shape': llm_shape} if llm_shape is not None else {}))
        paths[name] = folder
    return paths
