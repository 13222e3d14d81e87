"""chat: the xtuner-format export, the huggingface export and transformers' own generate give the
same greedy answer; streaming, multi-turn, stop words and one-line errors."""
from __future__ import annotations

import pytest
import torch
from llava_checkpoints import FINETUNE, cfg_options, make_checkpoint, sample_image

from mmllava.cli import main

PROMPT = 'What colour is the circle?'


@pytest.fixture(scope='module')
def exports(tiny_zoo, tmp_path_factory):
    """xtuner, huggingface and official (fp32) exports of one LoRA checkpoint, and an image file."""
    root = tmp_path_factory.mktemp('chat')
    make_checkpoint(tiny_zoo, root / 'iter_5.pth', qlora=False, scale=0.02)
    for fmt in ('xtuner', 'huggingface', 'official'):
        assert main(['convert', 'pth_to_hf', FINETUNE, str(root / 'iter_5.pth'), str(root / fmt), '--fp32',
                     '--save-format', fmt, '--cfg-options', *cfg_options(tiny_zoo, qlora=False)]) == 0
    sample_image().save(root / 'image.png')
    return root


def chat(capsys, *args) -> list[str]:
    capsys.readouterr()
    assert main(['chat', *args, '--temperature', '0', '--max-new-tokens', '12', '--torch-dtype', 'float32']) == 0
    return capsys.readouterr().out.splitlines()


def test_xtuner_hf_and_transformers_answer_alike(tiny_zoo, exports, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmllava.chat.streaming import cut_at_stop_word
    from mmllava.data.image import load_image

    image = str(exports / 'image.png')
    xtuner = chat(capsys, str(tiny_zoo['internlm2_chat']), '--visual-encoder', str(tiny_zoo['clip_vit']),
                  '--llava', str(exports / 'xtuner'), '--prompt-template', 'internlm2_chat', '--image', image,
                  '--prompt', PROMPT)
    hf = chat(capsys, str(exports / 'huggingface'), '--image', image, '--prompt', PROMPT, '--no-streamer')

    model = LlavaForConditionalGeneration.from_pretrained(exports / 'huggingface').eval()
    processor = AutoProcessor.from_pretrained(exports / 'huggingface')
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=text, images=load_image(image), return_tensors='pt', add_special_tokens=False)
    out = model.generate(**enc, do_sample=False, max_new_tokens=12)
    answer = processor.decode(out[0, enc['input_ids'].shape[1]:])
    expected = cut_at_stop_word(answer, ['<|im_end|>', '</s>'])[0]
    assert len(expected) > 3
    assert xtuner == hf == [expected]


def test_session_streams_and_remembers(exports):
    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings

    chat_model = load_chat_model(exports / 'huggingface', torch_dtype='float32')
    session = ChatSession(chat_model, settings=GenerationSettings(max_new_tokens=8))
    pieces = []
    first = session.ask(PROMPT, image=sample_image(), stream_callback=pieces.append)
    assert ''.join(pieces) == first and len(pieces) > 1
    second = session.ask('And its shape?')
    assert session.turns == ['<image>\n' + PROMPT, first, 'And its shape?', second]
    assert len(session.images) == 1


def test_stop_words_cut_and_hold_back():
    from mmllava.chat.streaming import StopWordStreamer

    class CharTokenizer:  # one character per id
        def decode(self, ids, skip_special_tokens=False):
            return ''.join(chr(i) for i in ids)

    pieces = []
    streamer = StopWordStreamer(CharTokenizer(), ['<|im_end|>'], prompt_length=2, callback=pieces.append)
    ids = [ord(c) for c in 'PPab<|im']
    for n in range(3, len(ids) + 1):
        assert not streamer(torch.tensor([ids[:n]]))[0]
    assert ''.join(pieces) == 'ab'  # '<|im' could still become the stop word
    ids += [ord(c) for c in '_end|>zz']
    assert streamer(torch.tensor([ids]))[0]
    assert streamer.finish(ids[2:]) == 'ab<|im'[:2] and ''.join(pieces) == 'ab'


def test_streamed_byte_tokens_equal_the_final_answer():
    """Byte-fallback tokens decode as a run: <0x09> alone is a tab, but with an invalid byte after it
    the run is two U+FFFD (as the tiny InternLM2 tokenizer decodes them); the tab is not shown early."""
    from mmllava.chat.streaming import StopWordStreamer

    class ByteFallbackTokenizer:  # ids < 256: byte tokens <0xNN>; 1000 + c: the character c
        def convert_ids_to_tokens(self, ids):
            return [f'<0x{i:02X}>' if i < 256 else chr(i - 1000) for i in ids]

        def decode(self, ids, skip_special_tokens=False):
            text, run = '', b''
            for i in [*ids, None]:
                if i is not None and i < 256:
                    run += bytes([i])
                    continue
                try:
                    text += run.decode()
                except UnicodeDecodeError:
                    text += '\ufffd' * len(run)
                run = b''
                text += chr(i - 1000) if i is not None else ''
            return text

    pieces = []
    streamer = StopWordStreamer(ByteFallbackTokenizer(), ['<|im_end|>'], callback=pieces.append)
    ids = [1000 + ord('9'), 0x09, 0xE4, 0x80, 1000 + ord('9')]
    for n in range(1, len(ids) + 1):
        streamer(torch.tensor([ids[:n]]))
    final = streamer.finish(ids)
    assert final == '9\ufffd\ufffd\ufffd9' and ''.join(pieces) == final


def test_text_only_llm_and_interactive_loop(tiny_zoo, capsys, monkeypatch):
    import io

    from mmllava.chat.session import ChatSession

    asked = []
    original = ChatSession.ask
    monkeypatch.setattr(ChatSession, 'ask', lambda self, text, **kw: asked.append(text) or original(self, text, **kw))
    monkeypatch.setattr('sys.stdin', io.StringIO('hello\n\nexit\nnever asked\n'))
    assert main(['chat', str(tiny_zoo['qwen2_5_instruct']), '--prompt-template', 'qwen_chat', '--temperature', '0',
                 '--max-new-tokens', '4']) == 0
    assert asked == ['hello']  # the empty line is skipped, `exit` ends the loop


@pytest.mark.parametrize('args, message', [
    (['MODEL', '--image', 'missing.png', '--prompt', 'hi'], '--image: image file not found: {tmp}/missing.png '
                                                            '(a relative path is read from the current folder {tmp})'),
    (['MODEL', '--bits', '4', '--prompt', 'hi'], '--bits 4 needs a CUDA GPU (bitsandbytes inference); '
                                                 'none is available here'),
    (['{qwen}', '--prompt', 'hi'], '{qwen} does not record its prompt template; pass --prompt-template '
                                   '(one of: internlm2_chat, llama3_chat, qwen_chat, vicuna, plain)'),
    (['{qwen}', '--llava', '{tmp}', '--prompt', 'hi'], '--llava {tmp}: not an xtuner-format export '
                                                       '(no projector/config.json)'),
    (['{tmp}', '--prompt', 'hi'], '{tmp}: not a model folder (no config.json)'),
])
def test_chat_errors(tiny_zoo, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    fill = {'tmp': str(tmp_path), 'qwen': str(tiny_zoo['qwen2_5_instruct'])}
    args = [a.format(**fill) if a != 'MODEL' else str(tiny_zoo['qwen2_5_instruct']) for a in args]
    assert main(['chat', *args]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == 'mmllava chat: error: ' + message.format(**fill)


def test_official_llava_layout_chats_as_the_huggingface_export(exports, tmp_path, capsys):
    """The original LLaVA layout: the LLM with model.mm_projector, the tower named by mm_vision_tower
    (moved away: --visual-encoder names it, else a one-line error)."""
    import json
    import shutil

    image = str(exports / 'image.png')
    turns = ['--image', image, '--prompt', PROMPT, '--prompt', 'And its shape?', '--no-streamer']
    expected = chat(capsys, str(exports / 'huggingface'), *turns)
    assert chat(capsys, str(exports / 'official'), *turns) == expected
    moved = tmp_path / 'official'
    shutil.copytree(exports / 'official', moved)
    shutil.move(moved / 'visual_encoder', tmp_path / 'vision')
    config = json.loads((moved / 'config.json').read_text())
    assert config['mm_vision_tower'] == str((exports / 'official' / 'visual_encoder').resolve())
    config['mm_vision_tower'] = 'openai/clip-vit-large-patch14-336'  # LLaVA's own folders name a hub id
    (moved / 'config.json').write_text(json.dumps(config))
    assert chat(capsys, str(moved), '--visual-encoder', str(tmp_path / 'vision'), *turns) == expected
    assert main(['chat', str(moved), '--prompt', 'hi']) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mmllava chat: error: {moved}: mm_vision_tower 'openai/clip-vit-large-patch14-336' is not a local "
        'vision encoder folder: pass --visual-encoder PATH')

    # image_aspect_ratio='pad' (a config with pad_image_to_square): images are padded as in training
    from mmllava.chat.loader import load_chat_model
    from mmllava.data.image import expand2square

    (moved / 'config.json').write_text(json.dumps({**config, 'image_aspect_ratio': 'pad'}))
    chat_model = load_chat_model(moved, visual_encoder=tmp_path / 'vision', torch_dtype='float32')
    processor = chat_model.image_processor
    padded = processor(expand2square(sample_image(), processor.background_rgb))[None]
    assert chat_model.pad_image_to_square and torch.equal(chat_model.pixel_values(sample_image()), padded)
    assert not torch.equal(processor(sample_image())[None], padded)
