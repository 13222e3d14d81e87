"""Official InternVL2 (remote-code ``InternVLChatModel``) <-> transformers' native InternVL: config and
state-dict conversion (pure functions, no file IO).

Native keys are those of ``InternVLForConditionalGeneration`` as transformers 5 saves them::

    official                                        native
    vision_model.embeddings.class_embedding         model.vision_tower.embeddings.cls_token
    vision_model.embeddings.patch_embedding.*       model.vision_tower.embeddings.patch_embeddings.projection.*
    vision_model.embeddings.position_embedding      model.vision_tower.embeddings.position_embeddings
    vision_model.encoder.layers.N.attn.qkv.*        model.vision_tower.encoder.layer.N.attention.{q,k,v}_proj.*
    ....attn.proj / attn.{q,k}_norm                 ....attention.projection_layer / attention.{q,k}_norm
    ....ls1 / ls2 / mlp.fc{1,2}                     ....lambda_1 / lambda_2 / mlp.fc{1,2}
    ....norm1 / norm2                               ....layernorm_before / layernorm_after
    mlp1.0 / mlp1.1 / mlp1.3                        model.multi_modal_projector.layer_norm / linear_1 / linear_2
    language_model.model.* (InternLM2 names)        model.language_model.* (Llama names, wqkv split)
    language_model.output                           lm_head

``attn.qkv`` rows are ``[q; k; v]`` (InternViT reshapes its output to ``(3, heads, head_dim)``), so
the split is three equal chunks. The InternLM2 LLM goes through ``mmllava.formats.internlm2``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, InternVLConfig, InternVLVisionConfig

from mmllava.errors import MMLLaVAError
from mmllava.formats.internlm2 import internlm2_config_to_llama, internlm2_to_llama, llama_to_internlm2

VISION_OFFICIAL, VISION_NATIVE = 'vision_model.', 'model.vision_tower.'
LLM_OFFICIAL, LLM_NATIVE = 'language_model.model.', 'model.language_model.'
# (official, native) renames inside the vision tower; each is a whole dotted segment run.
_VISION_RENAMES = (
    ('embeddings.class_embedding', 'embeddings.cls_token'),
    ('embeddings.patch_embedding', 'embeddings.patch_embeddings.projection'),
    ('embeddings.position_embedding', 'embeddings.position_embeddings'),
    ('encoder.layers', 'encoder.layer'),
    ('attn.proj', 'attention.projection_layer'),
    ('attn.q_norm', 'attention.q_norm'),
    ('attn.k_norm', 'attention.k_norm'),
    ('ls1', 'lambda_1'),
    ('ls2', 'lambda_2'),
    ('norm1', 'layernorm_before'),
    ('norm2', 'layernorm_after'),
)
_PROJECTOR_RENAMES = (('mlp1.0.', 'model.multi_modal_projector.layer_norm.'),
                      ('mlp1.1.', 'model.multi_modal_projector.linear_1.'),
                      ('mlp1.3.', 'model.multi_modal_projector.linear_2.'))
_QKV = re.compile(r'^(.*)attn\.qkv\.(weight|bias)$')
_Q_PROJ = re.compile(r'^(.*)attention\.q_proj\.(weight|bias)$')


def is_official_internvl(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` dict is an official (remote-code) InternVL chat model."""
    return config.get('model_type') == 'internvl_chat' or 'InternVLChatModel' in (config.get('architectures') or ())


# Top-level key prefixes of an official checkpoint; any other key belongs to no part.
OFFICIAL_PARTS = (VISION_OFFICIAL, 'language_model.', 'mlp1.')
# Key forms of native folders -> the native keys of ``InternVLForConditionalGeneration``: transformers
# 4.52 and 5 save the legacy form (``language_model.model.*``, ``vision_tower.*``), our export the new one.
_NATIVE_FOLDER_PREFIXES = (('model.vision_tower.', VISION_NATIVE), ('vision_tower.', VISION_NATIVE),
                           ('model.multi_modal_projector.', 'model.multi_modal_projector.'),
                           ('multi_modal_projector.', 'model.multi_modal_projector.'),
                           ('model.language_model.', LLM_NATIVE), ('language_model.model.', LLM_NATIVE),
                           ('language_model.lm_head.', 'lm_head.'), ('lm_head.', 'lm_head.'))


def is_native_internvl(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` dict is a transformers-native ``InternVLForConditionalGeneration``."""
    return config.get('model_type') == 'internvl'


def native_folder_key(key: str) -> str | None:
    """A native folder's key (either form, see ``_NATIVE_FOLDER_PREFIXES``) as the native key, or
    ``None`` for a key of no InternVL part."""
    for old, new in _NATIVE_FOLDER_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def native_config_to_official(config: Mapping[str, Any], folder=None) -> dict:
    """The official ``config.json`` dict equivalent to a native ``InternVLConfig`` dict (the inverse
    of :func:`official_config_to_native` for the settings it reads); the tiling settings come from the
    folder's ``preprocessor_config.json`` (``GotOcr2ImageProcessor``) when there is one.

    The LM head is tied as the writer tied it: transformers 5 decides by the top-level
    ``tie_word_embeddings``, 4.52 by the text config's."""
    vision = config['vision_config']
    text = dict(config['text_config'])
    text['tie_word_embeddings'] = bool(config.get('tie_word_embeddings', text.get('tie_word_embeddings', False)))

    def side(value):
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    official_vision = dict(
        hidden_size=vision['hidden_size'], intermediate_size=vision['intermediate_size'],
        num_hidden_layers=vision['num_hidden_layers'], num_attention_heads=vision['num_attention_heads'],
        hidden_act=vision.get('hidden_act', 'gelu'), qkv_bias=vision.get('attention_bias', False),
        qk_normalization=vision.get('use_qk_norm', False), norm_type=vision.get('norm_type', 'layer_norm'),
        layer_norm_eps=vision.get('layer_norm_eps', 1e-6), image_size=side(vision.get('image_size', 448)),
        patch_size=side(vision.get('patch_size', 14)), num_channels=vision.get('num_channels', 3),
        attention_dropout=vision.get('attention_dropout', 0.0), dropout=vision.get('hidden_dropout_prob', 0.0))
    processor = {}
    if folder is not None and (Path(folder) / 'preprocessor_config.json').is_file():
        processor = json.loads((Path(folder) / 'preprocessor_config.json').read_text(encoding='utf-8'))
    size = processor.get('size') or {}
    official = dict(
        model_type='internvl_chat', architectures=['InternVLChatModel'], vision_config=official_vision,
        llm_config=text, downsample_ratio=config.get('downsample_ratio', 0.5),
        select_layer=config.get('vision_feature_layer', -1), ps_version='v2',
        force_image_size=int(size.get('height', official_vision['image_size'])),
        dynamic_image_size=bool(processor.get('crop_to_patches', True)),
        min_dynamic_patch=int(processor.get('min_patches', 1)), max_dynamic_patch=int(processor.get('max_patches', 12)),
        use_thumbnail=True)
    if config.get('prompt_template'):
        official['prompt_template'] = config['prompt_template']
    return official


def _is_internlm2(llm_config: Mapping[str, Any]) -> bool:
    return (llm_config.get('model_type') == 'internlm2'
            or 'InternLM2ForCausalLM' in (llm_config.get('architectures') or ()))


def tokens_per_tile(config: Mapping[str, Any]) -> int:
    """Image tokens one tile makes: ``(image_size / patch)^2 x downsample_ratio^2`` (256 for InternVL2)."""
    patches = (force_image_size(config) // config['vision_config']['patch_size']) ** 2
    return int(patches * config['downsample_ratio'] ** 2)


def force_image_size(config: Mapping[str, Any]) -> int:
    """The tile size: ``force_image_size``, else the vision tower's ``image_size``."""
    return int(config.get('force_image_size') or config['vision_config']['image_size'])


def check_supported(config: Mapping[str, Any]) -> None:
    """Raise ``MMLLaVAError`` for official settings the native network cannot reproduce."""
    if config.get('ps_version', 'v1') != 'v2':
        raise MMLLaVAError(f'InternVL ps_version={config.get("ps_version")!r}: only the v2 pixel shuffle '
                           '(InternVL 1.5 and later) is supported')
    if int(1 / config['downsample_ratio']) ** 2 * config['downsample_ratio'] ** 2 != 1:
        raise MMLLaVAError(f'InternVL downsample_ratio={config["downsample_ratio"]}: must be 1/n')


def official_config_to_native(config: Mapping[str, Any], image_token_id: int | None = None):
    """The native ``InternVLConfig`` of an official ``config.json`` dict.

    An InternLM2 LLM becomes a Llama ``text_config``; other LLMs (Qwen2, Phi-3...) keep their own.
    ``tie_word_embeddings`` follows the LLM (InternVLConfig would tie by default, wrong for InternLM2).
    ``image_token_id`` is the ``<IMG_CONTEXT>`` id (only exports need it).
    """
    check_supported(config)
    vision = config['vision_config']
    llm = config['llm_config']
    text_config = (internlm2_config_to_llama(llm) if _is_internlm2(llm)
                   else AutoConfig.for_model(**{k: v for k, v in llm.items() if k != 'model_type'},
                                             model_type=llm['model_type']))
    vision_config = InternVLVisionConfig(
        hidden_size=vision['hidden_size'], intermediate_size=vision['intermediate_size'],
        num_hidden_layers=vision['num_hidden_layers'], num_attention_heads=vision['num_attention_heads'],
        hidden_act=vision.get('hidden_act', 'gelu'), attention_bias=vision.get('qkv_bias', True),
        use_qk_norm=vision.get('qk_normalization', False), norm_type=vision.get('norm_type', 'layer_norm'),
        layer_norm_eps=vision.get('layer_norm_eps', 1e-6), image_size=vision['image_size'],
        patch_size=vision['patch_size'], num_channels=vision.get('num_channels', 3),
        attention_dropout=vision.get('attention_dropout', 0.0), hidden_dropout_prob=vision.get('dropout', 0.0),
        # InternViT has no final norm: the native tower's pooling layer norm must be an identity.
        use_mean_pooling=True)
    extra = {} if image_token_id is None else {'image_token_id': image_token_id}
    native = InternVLConfig(
        vision_config=vision_config, text_config=text_config, image_seq_length=tokens_per_tile(config),
        downsample_ratio=config['downsample_ratio'], projector_hidden_act='gelu',
        vision_feature_layer=config.get('select_layer', -1), vision_feature_select_strategy='default',
        tie_word_embeddings=bool(llm.get('tie_word_embeddings', False)), **extra)
    native.architectures = ['InternVLForConditionalGeneration']
    return native


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        key = re.sub(rf'(^|\.){re.escape(old)}(\.|$)', rf'\g<1>{new}\g<2>', key)
    return key


def official_to_native(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename an official InternVL state dict to native keys, splitting ``attn.qkv`` and InternLM2's ``wqkv``.

    ``config`` is the official ``config.json`` dict. Unknown top-level keys are an error.
    """
    llm = config['llm_config']
    vision, language, out = {}, {}, {}
    for key, tensor in state_dict.items():
        if key.startswith(VISION_OFFICIAL):
            vision[key] = tensor
        elif key.startswith('language_model.'):
            language[key] = tensor
        elif key.startswith('mlp1.'):
            out[next(new + key[len(old):] for old, new in _PROJECTOR_RENAMES if key.startswith(old))] = tensor
        else:
            raise MMLLaVAError(f'unexpected key {key!r} in an official InternVL checkpoint')
    for key, tensor in vision.items():
        native = VISION_NATIVE + _rename(key[len(VISION_OFFICIAL):], _VISION_RENAMES)
        packed = _QKV.match(native)
        if packed:
            prefix, kind = packed.groups()
            for name, part in zip('qkv', tensor.chunk(3, dim=0)):
                out[f'{prefix}attention.{name}_proj.{kind}'] = part.contiguous()
        else:
            out[native] = tensor
    if _is_internlm2(llm):
        language = internlm2_to_llama(language, llm)
    for key, tensor in language.items():
        if key.startswith('language_model.lm_head.'):
            out[key.removeprefix('language_model.')] = tensor
        else:
            out[LLM_NATIVE + key.removeprefix(LLM_OFFICIAL)] = tensor
    return out


def native_to_official(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_native`: pack q/k/v into ``attn.qkv`` (and ``wqkv``), official names."""
    inverse_vision = tuple((new, old) for old, new in _VISION_RENAMES)
    llm = config['llm_config']
    language, out = {}, {}
    for key, tensor in state_dict.items():
        if key.startswith(VISION_NATIVE):
            if re.search(r'attention\.[kv]_proj\.(weight|bias)$', key):
                continue  # packed together with q_proj below
            query = _Q_PROJ.match(key)
            if query:
                prefix, kind = query.groups()
                parts = [state_dict[f'{prefix}attention.{name}_proj.{kind}'] for name in 'qkv']
                key, tensor = f'{prefix}attn.qkv.{kind}', torch.cat(parts, dim=0)
            out[VISION_OFFICIAL + _rename(key[len(VISION_NATIVE):], inverse_vision)] = tensor
        elif key.startswith('model.multi_modal_projector.'):
            out[next(old + key[len(new):] for old, new in _PROJECTOR_RENAMES if key.startswith(new))] = tensor
        elif key.startswith('lm_head.'):
            language['language_model.' + key] = tensor
        elif key.startswith(LLM_NATIVE):
            language[LLM_OFFICIAL + key[len(LLM_NATIVE):]] = tensor
        else:
            raise MMLLaVAError(f'unexpected key {key!r} in a native InternVL state dict')
    if _is_internlm2(llm):
        language = llama_to_internlm2(language, llm)
    return {**out, **language}
