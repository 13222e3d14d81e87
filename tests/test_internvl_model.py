"""InternVL2 official <-> native conversion (real 2B key/shape table on the meta device), the tiny
official folder loaded without remote code against a reference InternViT written here, and the
InternVL dataset/collate token layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tolerances import transformer_tolerance
import torch.nn.functional as F

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.errors import MMLLaVAError
from mmllava.formats.internvl_native import native_to_official, official_config_to_native, official_to_native

REPO = Path(__file__).resolve().parents[1]

# InternVL2-2B: InternViT-300M-448px + InternLM2-chat-1.8B (FORMATS.md), vocab with the 9 InternVL tokens.
VIT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
           image_size=448, qkv_bias=True, qk_normalization=False, norm_type='layer_norm', layer_norm_eps=1e-6,
           hidden_act='gelu', num_channels=3, model_type='intern_vit_6b')
LLM = dict(architectures=['InternLM2ForCausalLM'], model_type='internlm2', vocab_size=92553, hidden_size=2048,
           num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192,
           rope_theta=1000000, rope_scaling={'type': 'dynamic', 'factor': 2.0}, bias=False, tie_word_embeddings=False)
INTERNVL2_2B = dict(architectures=['InternVLChatModel'], model_type='internvl_chat', vision_config=VIT,
                    llm_config=LLM, downsample_ratio=0.5, force_image_size=448, ps_version='v2', select_layer=-1,
                    template='internlm2-chat', dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1,
                    max_dynamic_patch=12)


def official_2b_shapes() -> dict[str, tuple[int, ...]]:
    """Every official InternVL2-2B weight name and shape, from FORMATS.md's naming."""
    c, inter, llm = VIT['hidden_size'], VIT['intermediate_size'], LLM['hidden_size']
    shapes = {'vision_model.embeddings.class_embedding': (1, 1, c),
              'vision_model.embeddings.patch_embedding.weight': (c, 3, 14, 14),
              'vision_model.embeddings.patch_embedding.bias': (c,),
              'vision_model.embeddings.position_embedding': (1, 32 * 32 + 1, c),
              'mlp1.0.weight': (4 * c,), 'mlp1.0.bias': (4 * c,), 'mlp1.1.weight': (llm, 4 * c), 'mlp1.1.bias': (llm,),
              'mlp1.3.weight': (llm, llm), 'mlp1.3.bias': (llm,),
              'language_model.model.tok_embeddings.weight': (92553, llm), 'language_model.model.norm.weight': (llm,),
              'language_model.output.weight': (92553, llm)}
    for i in range(24):
        v = f'vision_model.encoder.layers.{i}.'
        shapes.update({v + 'attn.qkv.weight': (3 * c, c), v + 'attn.qkv.bias': (3 * c,), v + 'attn.proj.weight': (c, c),
                       v + 'attn.proj.bias': (c,), v + 'ls1': (c,), v + 'ls2': (c,), v + 'norm1.weight': (c,),
                       v + 'norm1.bias': (c,), v + 'norm2.weight': (c,), v + 'norm2.bias': (c,),
                       v + 'mlp.fc1.weight': (inter, c), v + 'mlp.fc1.bias': (inter,), v + 'mlp.fc2.weight': (c, inter),
                       v + 'mlp.fc2.bias': (c,)})
        t = f'language_model.model.layers.{i}.'
        shapes.update({t + 'attention.wqkv.weight': ((16 + 2 * 8) * 128, llm), t + 'attention.wo.weight': (llm, llm),
                       t + 'feed_forward.w1.weight': (8192, llm), t + 'feed_forward.w3.weight': (8192, llm),
                       t + 'feed_forward.w2.weight': (llm, 8192), t + 'attention_norm.weight': (llm,),
                       t + 'ffn_norm.weight': (llm,)})
    return shapes


def test_internvl2_2b_keys_and_shapes_match_native_transformers():
    from transformers import InternVLForConditionalGeneration

    official = {k: torch.empty(s, device='meta') for k, s in official_2b_shapes().items()}
    native = official_to_native(official, INTERNVL2_2B)
    config = official_config_to_native(INTERNVL2_2B, image_token_id=92546)
    with torch.device('meta'):
        model = InternVLForConditionalGeneration(config)
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert {k: tuple(t.shape) for k, t in native.items()} == expected
    assert 'model.vision_tower.encoder.layer.23.attention.v_proj.bias' in native
    assert 'model.multi_modal_projector.linear_2.weight' in native and 'lm_head.weight' in native
    # the native config reproduces InternVL2-2B: untied InternLM2 head, 256 tokens per 448 px tile
    assert config.tie_word_embeddings is False and config.text_config.tie_word_embeddings is False
    assert config.image_seq_length == 256 and config.vision_feature_layer == -1
    assert config.text_config.rope_parameters == {'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1000000.0}
    back = native_to_official(native, INTERNVL2_2B)
    assert {k: tuple(t.shape) for k, t in back.items()} == official_2b_shapes()


def test_official_native_round_trip_is_exact(tiny_zoo):
    from safetensors.torch import load_file

    folder = tiny_zoo['internvl2_official']
    config = json.loads((folder / 'config.json').read_text())
    official = load_file(str(folder / 'model.safetensors'))
    back = native_to_official(official_to_native(official, config), config)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_unsupported_official_settings_are_refused():
    with pytest.raises(MMLLaVAError, match='ps_version'):
        official_config_to_native({**INTERNVL2_2B, 'ps_version': 'v1'})
    with pytest.raises(MMLLaVAError, match="unexpected key 'extra.weight'"):
        official_to_native({'extra.weight': torch.zeros(1)}, INTERNVL2_2B)


def reference_features(weights: dict, config: dict, pixels: torch.Tensor) -> torch.Tensor:
    """InternVLChatModel.extract_feature written from the official weights: InternViT (qkv packed, pre-norm,
    layer scales), CLS dropped, ps v2 pixel shuffle, mlp1 = LayerNorm, Linear, GELU, Linear."""
    from test_internvl_tiling import official_pixel_shuffle

    v = config['vision_config']
    c, heads = v['hidden_size'], v['num_attention_heads']
    w = {k.removeprefix('vision_model.'): t for k, t in weights.items()}
    x = F.conv2d(pixels, w['embeddings.patch_embedding.weight'], w['embeddings.patch_embedding.bias'],
                 stride=v['patch_size']).flatten(2).transpose(1, 2)
    x = torch.cat([w['embeddings.class_embedding'].expand(len(x), -1, -1), x], 1) + w['embeddings.position_embedding']
    for i in range(v['num_hidden_layers']):
        p = f'encoder.layers.{i}.'
        h = F.layer_norm(x, (c,), w[p + 'norm1.weight'], w[p + 'norm1.bias'], v['layer_norm_eps'])
        qkv = F.linear(h, w[p + 'attn.qkv.weight'], w[p + 'attn.qkv.bias'])
        q, k, val = qkv.reshape(len(x), -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(len(x), -1, c)
        x = x + F.linear(attn, w[p + 'attn.proj.weight'], w[p + 'attn.proj.bias']) * w[p + 'ls1']
        h = F.layer_norm(x, (c,), w[p + 'norm2.weight'], w[p + 'norm2.bias'], v['layer_norm_eps'])
        h = F.linear(F.gelu(F.linear(h, w[p + 'mlp.fc1.weight'], w[p + 'mlp.fc1.bias'])), w[p + 'mlp.fc2.weight'],
                     w[p + 'mlp.fc2.bias'])
        x = x + h * w[p + 'ls2']
    x = x[:, 1:]
    side = int(x.shape[1] ** 0.5)
    x = official_pixel_shuffle(x.reshape(len(x), side, side, -1), config['downsample_ratio'])
    x = x.reshape(len(x), -1, x.shape[-1])
    x = F.layer_norm(x, (x.shape[-1],), weights['mlp1.0.weight'], weights['mlp1.0.bias'])
    x = F.gelu(F.linear(x, weights['mlp1.1.weight'], weights['mlp1.1.bias']))
    return F.linear(x, weights['mlp1.3.weight'], weights['mlp1.3.bias'])


def test_tiny_official_folder_loads_natively_and_matches_reference_internvit(tiny_zoo):
    from safetensors.torch import load_file
    from transformers import InternVLVisionModel, LlamaForCausalLM

    from mmllava.pretrained.internvl_folder import load_internvl
    from mmllava.models import InternVLModel

    folder = tiny_zoo['internvl2_official']
    parts = load_internvl(folder)
    assert isinstance(parts.vision_tower, InternVLVisionModel) and isinstance(parts.llm, LlamaForCausalLM)
    assert parts.official_config['template'] == 'internlm2-chat'
    model = InternVLModel(parts, use_activation_checkpointing=False).eval()
    config = json.loads((folder / 'config.json').read_text())
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        features = model.encode_images(pixels)
        expected = reference_features(load_file(str(folder / 'model.safetensors')), config, pixels)
    assert features.shape == (3, 16, 64)
    # fp32, another order of the sums through the patch embedding, InternViT's 2 layers (128-wide
    # MLP) and the projector's 2 Linears
    atol = transformer_tolerance(torch.float32, 2, 128, expected.abs().max(), extra=1 + 2)
    torch.testing.assert_close(features, expected, rtol=0, atol=atol)


def test_loader_refuses_other_folders(tiny_zoo):
    from mmllava.pretrained.internvl_folder import load_internvl

    with pytest.raises(MMLLaVAError, match="is a 'internlm2' model, expected an InternVL folder"):
        load_internvl(tiny_zoo['internlm2_chat'])


@pytest.fixture(scope='module')
def dataset_parts(tiny_zoo):
    from mmllava.pretrained import load_tokenizer
    from mmllava.pretrained.internvl_folder import load_internvl_image_processor

    folder = tiny_zoo['internvl2_official']
    return load_tokenizer(folder), load_internvl_image_processor(folder)


def _write(tmp_path, samples, images):
    from PIL import Image

    (tmp_path / 'images').mkdir(exist_ok=True)
    for name, size in images.items():
        Image.new('RGB', size, (10, 200, 30)).save(tmp_path / 'images' / name)
    (tmp_path / 'data.json').write_text(json.dumps(samples))
    return tmp_path / 'data.json', tmp_path / 'images'


def test_dataset_layout_tiles_and_collate(tmp_path, dataset_parts):
    from mmllava.data.internvl_dataset import InternVLDataset, internvl_collate

    tokenizer, processor = dataset_parts
    turns = [{'from': 'human', 'value': 'What color is the shape?'}, {'from': 'gpt', 'value': 'green'}]
    data, images = _write(tmp_path, [{'image': 'square.png', 'conversations': turns},  # no <image>: prepended
                                     {'image': 'wide.png', 'conversations': turns},
                                     {'conversations': turns}],  # text only
                          {'square.png': (64, 64), 'wide.png': (150, 56)})
    dataset = InternVLDataset(data, images, tokenizer, processor, max_length=256)
    start, end, context = (tokenizer.convert_tokens_to_ids(t) for t in ('<img>', '</img>', '<IMG_CONTEXT>'))
    items = [dataset[i] for i in range(3)]
    assert [None if i['pixel_values'] is None else i['pixel_values'].shape[0] for i in items] == [1, 4, None]
    for item, tiles in zip(items[:2], (1, 4)):  # wide: 3 x 1 grid + thumbnail
        ids = item['input_ids']
        first = ids.index(start)
        assert ids[first + 1:first + 1 + 16 * tiles] == [IMAGE_TOKEN_INDEX] * (16 * tiles)
        assert ids[first + 1 + 16 * tiles] == end and ids.count(IMAGE_TOKEN_INDEX) == 16 * tiles
        assert tokenizer.decode(ids[first - 3:first]) == '<|im_start|>user\n'  # the image opens the user turn
        assert tokenizer.decode(ids[first + 2 + 16 * tiles:first + 3 + 16 * tiles]) == '\n'
        assert all(label == IGNORE_INDEX for label in item['labels'][:first + 2 + 16 * tiles])
        assert context not in ids  # inside training the context tokens are image positions
    assert dataset.modality_length[2] < 0 < dataset.modality_length[1]

    batch = internvl_collate(items, dataset.pad_token_id)['data']
    assert batch['pixel_values'].shape == (5, 3, 56, 56) and batch['num_tiles'].tolist() == [1, 4]
    assert batch['input_ids'].shape[0] == 3 and int((batch['input_ids'] == IMAGE_TOKEN_INDEX).sum()) == 80
    assert internvl_collate(items[2:], 0)['data']['pixel_values'] is None


def test_dataset_refuses_two_images_and_tokenizers_without_image_tokens(tmp_path, dataset_parts, tiny_zoo):
    from mmllava.pretrained import load_tokenizer
    from mmllava.data.internvl_dataset import InternVLDataset

    tokenizer, processor = dataset_parts
    turns = [{'from': 'human', 'value': '<image>\nWhat?'}, {'from': 'gpt', 'value': 'red'}]
    data, images = _write(tmp_path, [{'image': ['a.png', 'b.png'], 'conversations': turns}],
                          {'a.png': (64, 64), 'b.png': (64, 64)})
    with pytest.raises(MMLLaVAError, match=r'data.json:0: 2 images in one sample; only 0 or 1 are supported'):
        InternVLDataset(data, images, tokenizer, processor)
    with pytest.raises(MMLLaVAError, match='the tokenizer has no <img> token'):
        InternVLDataset(data, images, load_tokenizer(tiny_zoo['internlm2_chat']), processor)
