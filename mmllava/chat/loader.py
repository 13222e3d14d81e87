"""Load any model folder(s) ``mmllava chat`` supports into one :class:`ChatModel`.

| what the user passes | kind | how images enter the prompt |
| --- | --- | --- |
| ``LLM --llava XTUNER_EXPORT [--visual-encoder VE]`` | ``llava`` | an ``LLaVAModel`` splices projected features at ``IMAGE_TOKEN_INDEX`` positions |
| ``HF_EXPORT`` (a ``LlavaForConditionalGeneration`` folder) | ``hf_llava`` | transformers' own model, ``<image>`` id x ``image_seq_length`` |
| ``INTERNVL_DIR`` (an official InternVL folder or export) | ``internvl`` | an ``InternVLModel``; each image is tiled, ``<img>`` + positions + ``</img>`` (``mmllava.chat.internvl_chat``) |
| ``HF_INTERNVL`` (an ``InternVLForConditionalGeneration`` folder: our huggingface export) | ``hf_internvl`` | transformers' own model, tiled the same way, ``<IMG_CONTEXT>`` at the positions |
| ``OFFICIAL_LLAVA`` (the original LLaVA layout: our official export) | ``llava`` | as the xtuner export; the vision tower from ``mm_vision_tower`` or ``--visual-encoder`` |
| ``LLM`` | ``llm`` | text only |

Every kind shares the prompt path: our template renders the conversation, ``<image>`` becomes the
image positions, and generation returns only the new token ids. ``chat_model_for`` puts a training
config's in-memory model on the same path (``eval --checkpoint``, ``EvaluateChatHook``). A turn
without an image is text only for every kind.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, LlavaForConditionalGeneration
from transformers.initialization import no_init_weights

from mmllava.constants import IMAGE_TOKEN_INDEX
from mmllava.convert.official_llava import OFFICIAL_CLASSES
from mmllava.data.encode import bos_ids, tokenize_with_images
from mmllava.data.image import expand2square
from mmllava.errors import MMLLaVAError
from mmllava.formats.llava_projector import split_projector_state
from mmllava.formats.strict import check_loading_info, check_weights, load_peft_adapter, shapes
from mmllava.models import InternVLModel, LLaVAModel
from mmllava.models.lora import is_quantized
from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.pretrained.folder_reading import dtype_kwargs, iter_weight_shards, read_json
from mmllava.templates import TEMPLATES, PromptTemplate, get_template

TORCH_DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
# Kinds whose model is one of ours: it splices image features into the embeddings, so generate()
# returns only the new tokens.
OUR_MODEL_KINDS = ('llava', 'internvl')


@dataclass
class ChatModel:
    """A loaded model with what chatting needs: tokenizer, template, image preprocessing.

    ``image_processor`` is ``None`` for text-only models; ``image_token_id`` is the ``<image>`` id of
    a transformers Llava (``None`` when the model takes ``IMAGE_TOKEN_INDEX`` positions).
    """

    kind: str
    model: Any
    tokenizer: Any
    template: PromptTemplate
    image_processor: Any = None
    num_image_tokens: int = 0
    image_token_id: int | None = None
    pad_image_to_square: bool = False  # LLaVA's image_aspect_ratio='pad', as the model was trained

    @property
    def device(self) -> torch.device:
        """Where inputs must go (the input embeddings' device)."""
        model = self.model.llm if self.kind in OUR_MODEL_KINDS else self.model
        return model.get_input_embeddings().weight.device

    def pixel_values(self, image) -> torch.Tensor:
        """A PIL image -> ``[1, 3, H, W]`` in the vision tower's dtype, on the model's device."""
        if self.image_processor is None:
            raise MMLLaVAError('this model is text-only: images need a LLaVA model (--llava or a LLaVA folder)')
        vision = self.model.visual_encoder if self.kind == 'llava' else self.model.model.vision_tower
        if self.pad_image_to_square:
            image = expand2square(image, self.image_processor.background_rgb)
        return self.image_processor(image)[None].to(self.device, next(vision.parameters()).dtype)

    def prompt_ids(self, text: str, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``[1, L]`` ids of a rendered prompt: BOS if the template wants it, ``<image>`` -> image positions.
        ``images`` are the conversation's ``pixel_values`` in order (used where they set the token count)."""
        ids = bos_ids(self.tokenizer, self.template) + tokenize_with_images(text, self.tokenizer, self.num_image_tokens)
        if self.image_token_id is not None:
            ids = [self.image_token_id if i == IMAGE_TOKEN_INDEX else i for i in ids]
        return torch.tensor([ids], device=self.device)

    def prompt_length_in_output(self, input_ids: torch.Tensor) -> int:
        """How many prompt ids ``generate`` returns before the new ones (none from embeddings)."""
        return 0 if self.kind in OUR_MODEL_KINDS else input_ids.shape[1]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs) -> list[int]:
        """New token ids for the prompt ``input_ids`` (images in order in ``pixel_values``)."""
        mask = torch.ones_like(input_ids)
        # A text-only turn passes no pixel_values at all: transformers' Llava runs its vision tower
        # on an explicit pixel_values=None inside generate (AttributeError on None.shape).
        images = {} if pixel_values is None else {'pixel_values': pixel_values}
        if self.kind in OUR_MODEL_KINDS:
            out = self.model.generate(input_ids, attention_mask=mask, **images, **kwargs)
        else:
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, **images, **kwargs)
        return out[0, self.prompt_length_in_output(input_ids):].tolist()


def chat_model_for(model, tokenizer, template: str | PromptTemplate, image_processor=None,
                   pad_image_to_square: bool = False) -> ChatModel:
    """A :class:`ChatModel` around an in-memory ``LLaVAModel`` or ``InternVLModel`` (a training
    config's model: ``eval --checkpoint`` and ``EvaluateChatHook``), so they build prompts and
    generate exactly as ``chat`` and ``serve`` do with an export of it. ``pad_image_to_square``:
    as the LLaVA dataset of the config did."""
    template = template if isinstance(template, PromptTemplate) else get_template(template)
    if isinstance(model, InternVLModel):
        # chat.internvl subclasses ChatModel from this module: imported on use (a cycle otherwise)
        from mmllava.chat.internvl_chat import InternVLChatModel

        return InternVLChatModel('internvl', model, tokenizer, template, image_processor,
                                 getattr(image_processor, 'tokens_per_tile', 0))
    return ChatModel('llava', model, tokenizer, template, image_processor,
                     getattr(image_processor, 'num_image_tokens', 0), pad_image_to_square=pad_image_to_square)


def _template(name: str | None, stored: str | None, source: Path) -> PromptTemplate:
    """The explicit template, else the one the export recorded, else a clear error."""
    if name or stored:
        return get_template(name or stored)
    raise MMLLaVAError(f'{source} does not record its prompt template; pass --prompt-template '
                       f'(one of: {", ".join(TEMPLATES)})')


def _quantization(bits: int | None):
    """A ``BitsAndBytesConfig`` for ``--bits 4|8`` (CUDA only), or ``None``."""
    if bits is None:
        return None
    if bits not in (4, 8):
        raise MMLLaVAError(f'--bits must be 4 or 8, got {bits}')
    if not torch.cuda.is_available():
        raise MMLLaVAError(f'--bits {bits} needs a CUDA GPU (bitsandbytes inference); none is available here')

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_quant_type='nf4',
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def _with_adapter(model, adapter: Path):
    """``model`` with the PEFT adapter in ``adapter`` applied strictly (merged unless the model is quantised)."""
    peft_model = load_peft_adapter(model, adapter, '--llava')
    return peft_model if is_quantized(model) else peft_model.merge_and_unload()


def _load_xtuner_export(model_path: Path, llava: Path, visual_encoder: str | None, template: str | None,
                        dtype, quantization) -> ChatModel:
    """LLM + vision tower + ``--llava`` export (projector, adapters, or full llm/visual_encoder)."""
    projector_dir = llava / 'projector'
    if not (projector_dir / 'config.json').is_file():
        hint = ' (it is a transformers LLaVA folder: pass it as MODEL, without --llava)' if (
            llava / 'config.json').is_file() else ''
        raise MMLLaVAError(f'--llava {llava}: not an xtuner-format export (no projector/config.json){hint}')
    projector_cfg = read_json(projector_dir / 'config.json', '--llava')
    llm_dir = llava / 'llm' if (llava / 'llm' / 'config.json').is_file() else model_path
    vision_dir = llava / 'visual_encoder' if (llava / 'visual_encoder' / 'config.json').is_file() else visual_encoder
    if vision_dir is None:
        raise MMLLaVAError(f'--llava {llava} has no visual_encoder/: pass --visual-encoder PATH')
    llm = load_llm(llm_dir, torch_dtype=dtype, quantization_config=quantization)
    # The vision tower computes in the LLM's (unquantised) embedding dtype, as in training.
    vision = load_vision_encoder(vision_dir, torch_dtype=llm.get_input_embeddings().weight.dtype)
    if (llava / 'llm_adapter').is_dir():
        llm = _with_adapter(llm, llava / 'llm_adapter')
    if (llava / 'visual_encoder_adapter').is_dir():
        vision = _with_adapter(vision, llava / 'visual_encoder_adapter')
    model = LLaVAModel(llm=llm, visual_encoder=vision, freeze_llm=True, freeze_visual_encoder=True,
                       visual_select_layer=projector_cfg.get('visual_select_layer', -2),
                       projector_depth=projector_cfg.get('depth', 2), use_activation_checkpointing=False)
    state = {'projector.' + k: v for k, v in load_file(str(projector_dir / 'model.safetensors')).items()}
    projector, rest, _ = split_projector_state(state)
    _load_projector(model, projector, projector_dir, '--llava', unused=rest)
    image_processor = load_image_processor(vision_dir)
    return ChatModel('llava', model.eval(), load_tokenizer(llm_dir),
                     _template(template, projector_cfg.get('prompt_template'), llava),
                     image_processor, image_processor.num_image_tokens)


def _load_projector(model, projector: dict, source: Path, setting: str, unused: dict | None = None) -> None:
    """``projector`` (our ``projector.N.*`` keys) into ``model.projector``, strictly: a missing,
    wrong-shaped or (in ``unused``) left-over weight is the one-line error naming ``setting``."""
    projector = {k.removeprefix('projector.'): v for k, v in projector.items()}
    check_weights(setting, source, shapes(model.projector.state_dict()),
                  {**shapes(projector), **shapes(unused or {})}, 'projector')
    model.projector.load_state_dict(projector)


def _load_official_llava(path: Path, visual_encoder: str | None, template: str | None, dtype) -> ChatModel:
    """The original LLaVA layout (``--save-format official``, or LLaVA's own ``llava_llama`` /
    ``llava_qwen`` / ``llava_mistral`` folders): the LLM's weights with ``model.mm_projector`` beside
    them and the vision tower named by ``mm_vision_tower`` (or ``--visual-encoder``), as a frozen
    ``LLaVAModel``. Every LLM weight must be read and used."""
    config = read_json(path / 'config.json', 'model')
    llm_types = {llava_type: llm_type for llm_type, (_, llava_type) in OFFICIAL_CLASSES.items()}
    if config.get('model_type') not in llm_types:
        raise MMLLaVAError(f'{path}: the original LLaVA layout {config.get("model_type")!r} is not supported here '
                           f'(only {", ".join(llm_types)}); convert with --save-format huggingface or xtuner')
    vision_dir = Path(visual_encoder or config.get('mm_vision_tower') or '').expanduser()
    if not (vision_dir / 'config.json').is_file():
        raise MMLLaVAError(f'{path}: mm_vision_tower {config.get("mm_vision_tower")!r} is not a local vision '
                           'encoder folder: pass --visual-encoder PATH')
    if dtype == 'auto':
        dtype = config.get('torch_dtype') or config.get('dtype') or 'float32'
    llm_config = AutoConfig.for_model(llm_types[config['model_type']], **{
        k: v for k, v in config.items() if k not in ('model_type', 'architectures') and not k.startswith('mm_')
        and v is not None})  # an explicit rope_scaling=None makes transformers 5 warn
    with no_init_weights():  # every weight is read below
        llm = AutoModelForCausalLM.from_config(llm_config, **dtype_kwargs(dtype))
    llm_state, projector = {}, {}
    for shard in iter_weight_shards(path, 'model'):
        shard_projector, rest, _ = split_projector_state(shard)
        projector.update(shard_projector)
        llm_state.update(rest)
    missing, unused = llm.load_state_dict(llm_state, strict=False)
    if llm_config.tie_word_embeddings:  # the head is the embedding matrix: not stored
        missing = [key for key in missing if key != 'lm_head.weight']
    if missing or unused:
        raise MMLLaVAError(f'{path}: {len(missing)} LLM weights missing ({", ".join(missing[:3])}), {len(unused)} '
                           f'unused ({", ".join(unused[:3])})')
    llm.tie_weights()
    vision = load_vision_encoder(vision_dir, torch_dtype=llm.get_input_embeddings().weight.dtype)
    depth = re.fullmatch(r'mlp(\d+)x_gelu|linear', config.get('mm_projector_type', 'mlp2x_gelu'))
    if depth is None:
        raise MMLLaVAError(f'{path}: mm_projector_type {config.get("mm_projector_type")!r} is not linear or mlpNx_gelu')
    model = LLaVAModel(llm=llm, visual_encoder=vision, freeze_llm=True, freeze_visual_encoder=True,
                       visual_select_layer=config.get('mm_vision_select_layer', -2),
                       projector_depth=int(depth.group(1) or 1), use_activation_checkpointing=False)
    _load_projector(model, projector, path, 'MODEL')
    image_processor = load_image_processor(vision_dir)
    return ChatModel('llava', model.eval(), load_tokenizer(path),
                     _template(template, config.get('prompt_template'), path), image_processor,
                     image_processor.num_image_tokens, pad_image_to_square=config.get('image_aspect_ratio') == 'pad')


def _load_hf_llava(path: Path, template: str | None, dtype, quantization, device: str) -> ChatModel:
    """A ``LlavaForConditionalGeneration`` folder (our huggingface export or any legacy-layout one)."""
    config = read_json(path / 'config.json', 'model')
    extra = {'quantization_config': quantization, 'device_map': {'': device}} if quantization else {}
    try:
        # mismatched sizes are reported in `info` (and refused below) instead of raised as a report dump
        model, info = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype, output_loading_info=True,
                                                                    ignore_mismatched_sizes=True, **extra)
    except (OSError, ValueError, RuntimeError) as e:
        raise MMLLaVAError(f'model: {path}: cannot load the LLaVA folder: {str(e).splitlines()[0]}') from None
    check_loading_info('model', path, info, 'LLaVA', model.state_dict(),
                       tied=bool(model.config.get_text_config().tie_word_embeddings))
    image_processor = load_image_processor(path)
    return ChatModel('hf_llava', model.eval(), load_tokenizer(path),
                     _template(template, config.get('prompt_template'), path),
                     image_processor, int(config.get('image_seq_length', image_processor.num_image_tokens)),
                     image_token_id=model.config.image_token_index)


def load_chat_model(model: str | os.PathLike, llava: str | os.PathLike | None = None,
                    visual_encoder: str | os.PathLike | None = None, prompt_template: str | None = None,
                    torch_dtype: str = 'auto', bits: int | None = None, device: str | None = None) -> ChatModel:
    """Load ``model`` (an LLM, or a transformers LLaVA folder) with an optional xtuner-format
    ``llava`` export and ``visual_encoder``; see the module docstring for the combinations.

    ``torch_dtype``: ``auto`` (the folder's own), ``float32``, ``bfloat16`` or ``float16``;
    ``bits``: 4 or 8 (CUDA only); ``device``: default ``cuda`` when available, else ``cpu``.
    """
    if torch_dtype not in TORCH_DTYPES:
        raise MMLLaVAError(f'--torch-dtype must be one of {", ".join(TORCH_DTYPES)}, got {torch_dtype!r}')
    dtype = torch_dtype if torch_dtype == 'auto' else getattr(torch, torch_dtype)
    quantization = _quantization(bits)
    path = Path(model).expanduser()
    if not (path / 'config.json').is_file():
        raise MMLLaVAError(f'{path}: not a model folder (no config.json)')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model_type = read_json(path / 'config.json', 'model').get('model_type')
    if llava is not None:
        chat = _load_xtuner_export(path, Path(llava).expanduser(), visual_encoder, prompt_template, dtype,
                                   quantization)
    elif model_type == 'llava':
        chat = _load_hf_llava(path, prompt_template, dtype, quantization, device)
    elif model_type in ('internvl_chat', 'internvl'):  # official or transformers-native InternVL
        from mmllava.chat.internvl_chat import load_internvl_chat  # a cycle at the top (see above)

        chat = load_internvl_chat(path, prompt_template, dtype, quantization)
    elif model_type == 'internvl':
        from mmllava.chat.internvl_chat import load_hf_internvl_chat  # a cycle at the top (see above)

        chat = load_hf_internvl_chat(path, prompt_template, dtype, quantization, device)
    elif str(model_type).startswith('llava_'):
        if quantization is not None:
            raise MMLLaVAError(f'{path}: --bits is for transformers folders, not the original LLaVA layout; '
                               'convert with --save-format huggingface')
        chat = _load_official_llava(path, visual_encoder, prompt_template, dtype)
    else:
        template = _template(prompt_template, None, path)
        llm = load_llm(path, torch_dtype=dtype, quantization_config=quantization)
        chat = ChatModel('llm', llm.eval(), load_tokenizer(path), template)
    if quantization is None:  # bitsandbytes places quantised weights itself
        chat.model.to(device)
    return chat
