"""InternVL exports of a LoRA checkpoint: ``huggingface`` loads in transformers'
``InternVLForConditionalGeneration`` and ``official`` re-loads with our loader, both giving the
training model's logits; ``internvl_to_official`` is the same export; chat tiles and remembers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tolerances import transformer_tolerance

from mmllava.cli import main
from mmllava.constants import IMAGE_TOKEN_INDEX

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'internvl_tiny_internlm2_lora_finetune'


def cfg_options(zoo) -> list[str]:
    return [f'path={zoo["internvl2_official"]}', f'data_root={REPO}/data/synthetic/']


@pytest.fixture(scope='module')
def trained(tiny_zoo, tmp_path_factory):
    """A LoRA checkpoint with non-zero adapters, its model, a batch, and the two exports (fp32)."""
    from mmllava.config import build, load_config, parse_cfg_options
    from mmllava.data.internvl_dataset import internvl_collate

    root = tmp_path_factory.mktemp('internvl_export')
    cfg = load_config(CONFIG, parse_cfg_options(cfg_options(tiny_zoo)))
    model = build(cfg.model).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p += 0.05 * torch.randn(p.shape, generator=gen)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'iter_5.pth')
    dataset = build(cfg.internvl_dataset)
    batch = internvl_collate([dataset[i] for i in range(3)], dataset.pad_token_id)['data']
    for fmt in ('huggingface', 'official'):
        args = ['--save-format', fmt] if fmt == 'huggingface' else []  # official is InternVL's default
        assert main(['convert', 'pth_to_hf', CONFIG, str(root / 'iter_5.pth'), str(root / fmt), '--fp32', *args,
                     '--cfg-options', *cfg_options(tiny_zoo)]) == 0
    with torch.no_grad():
        logits = model(batch, mode='tensor')
    return dict(root=root, model=model, batch=batch, logits=logits, tokenizer=dataset.tokenizer)


def _compare(a, b, mask):
    """Logits at the real positions. fp32 export (LoRA merged in fp32) vs the training model: the
    order of the sums differs through InternViT's 2 layers and the LLM's 2 (both 128-wide MLPs),
    the patch embedding, the projector's 2 Linears and the head."""
    expected = b[mask.bool()]
    atol = transformer_tolerance(torch.float32, 2 + 2, 128, expected.abs().max(), extra=1 + 2 + 1)
    torch.testing.assert_close(a[mask.bool()], expected, rtol=0, atol=atol)


def test_huggingface_export_loads_in_transformers_with_the_training_logits(trained):
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

    folder = trained['root'] / 'huggingface'
    config = json.loads((folder / 'config.json').read_text())
    assert config['architectures'] == ['InternVLForConditionalGeneration']
    assert config['tie_word_embeddings'] is False and config['text_config']['tie_word_embeddings'] is False
    assert config['text_config']['rope_theta'] == 1000000.0 and config['image_seq_length'] == 16
    model = InternVLForConditionalGeneration.from_pretrained(folder).eval()
    context = trained['tokenizer'].convert_tokens_to_ids('<IMG_CONTEXT>')
    assert model.config.image_token_id == context
    batch = trained['batch']
    input_ids = batch['input_ids'].masked_fill(batch['input_ids'] == IMAGE_TOKEN_INDEX, context)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=batch['pixel_values'],
                       attention_mask=batch['attention_mask']).logits
    _compare(logits, trained['logits'], batch['attention_mask'])
    # InternVLProcessor's parts: a tokenizer naming the image tokens, a tiling image processor
    # (AutoProcessor itself needs torchvision for its video processor in transformers 5.23).
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.start_image_token, tokenizer.end_image_token) == ('<img>', '</img>')
    assert tokenizer.context_image_token_id == context
    image_processor = AutoImageProcessor.from_pretrained(folder)
    assert image_processor.crop_to_patches and image_processor.max_patches == 6
    assert image_processor.size['height'] == 56


def test_official_export_reloads_with_our_loader_with_the_training_logits(trained):
    from mmllava.pretrained.internvl_folder import load_internvl
    from mmllava.models import InternVLModel

    folder = trained['root'] / 'official'
    config = json.loads((folder / 'config.json').read_text())
    assert config['architectures'] == ['InternVLChatModel'] and config['prompt_template'] == 'internlm2_chat'
    assert config['torch_dtype'] == 'float32' and config['llm_config']['torch_dtype'] == 'float32'
    from safetensors import safe_open

    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        keys = set(f.keys())
    assert 'language_model.model.layers.0.attention.wqkv.weight' in keys and 'mlp1.1.weight' in keys
    assert 'vision_model.encoder.layers.0.attn.qkv.weight' in keys and not any('lora' in k for k in keys)
    tokenizer_config = json.loads((folder / 'tokenizer_config.json').read_text())
    assert tokenizer_config['tokenizer_class'] == 'InternLM2Tokenizer'
    assert '<|im_start|>' in tokenizer_config['chat_template']
    assert (folder / 'tokenizer.model').is_file()
    assert json.loads((folder / 'generation_config.json').read_text())['eos_token_id'] == [
        trained['tokenizer'].eos_token_id, trained['tokenizer'].convert_tokens_to_ids('<|im_end|>')]
    model = InternVLModel(load_internvl(folder), use_activation_checkpointing=False).eval()
    with torch.no_grad():
        logits = model(trained['batch'], mode='tensor')
    _compare(logits, trained['logits'], trained['batch']['attention_mask'])


def test_internvl_to_official_alias_writes_the_same_folder(trained, tiny_zoo):
    root = trained['root']
    assert main(['convert', 'internvl_to_official', CONFIG, str(root / 'iter_5.pth'), str(root / 'alias'), '--fp32',
                 '--cfg-options', *cfg_options(tiny_zoo)]) == 0
    names = sorted(p.name for p in (root / 'official').iterdir())
    assert names == sorted(p.name for p in (root / 'alias').iterdir())
    assert all((root / 'official' / n).read_bytes() == (root / 'alias' / n).read_bytes() for n in names)


def test_chat_tiles_the_image_and_keeps_the_conversation(trained, capsys):
    from PIL import Image

    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings

    folder = trained['root'] / 'official'
    image = Image.new('RGB', (150, 56), (220, 30, 30))  # 3 tiles + thumbnail
    image.save(trained['root'] / 'wide.png')
    capsys.readouterr()
    assert main(['chat', str(folder), '--image', str(trained['root'] / 'wide.png'), '--prompt', 'What color is it?',
                 '--prompt', 'Which side is the shape on?', '--temperature', '0', '--max-new-tokens', '5',
                 '--no-streamer']) == 0
    answers = capsys.readouterr().out.splitlines()

    chat_model = load_chat_model(folder, torch_dtype='float32')
    session = ChatSession(chat_model, settings=GenerationSettings(max_new_tokens=5))
    assert [session.ask('What color is it?', image=image), session.ask('Which side is the shape on?')] == answers
    ids = chat_model.prompt_ids('<image>\nhi', session.images)[0].tolist()
    assert session.images[0].shape[0] == 4 and ids.count(IMAGE_TOKEN_INDEX) == 4 * 16
    start, end = (chat_model.tokenizer.convert_tokens_to_ids(t) for t in ('<img>', '</img>'))
    assert ids[ids.index(start) + 1 + 64] == end
