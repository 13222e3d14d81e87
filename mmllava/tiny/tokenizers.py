"""Tiny tokenizers in the real on-disk formats, trained locally on the synthetic vocabulary.

- InternLM2: a sentencepiece BPE ``tokenizer.model`` (byte fallback, no normalisation, no dummy
  prefix) whose special pieces sit at the end of the vocabulary as in the real 92544-piece model,
  and a ``tokenizer_config.json`` naming the remote-code ``InternLM2Tokenizer``.
- Llama-3 and Qwen2.5: byte-level BPE ``tokenizer.json`` files built with ``tokenizers``, with the
  real pre-tokenizer patterns and the special tokens appended after the learned vocabulary.

Each writer returns a :class:`TinyVocab`; consumers look special tokens up by string, never by id.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mmllava.tiny.vocabulary import corpus

INTERNLM2_SPECIALS = (
    '<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>', '<|im_start|>')
INTERNVL2_TOKENS = ('<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>')
LLAMA3_SPECIALS = (
    '<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>', '<|reserved_special_token_1|>',
    '<|reserved_special_token_2|>', '<|reserved_special_token_3|>', '<|start_header_id|>', '<|end_header_id|>',
    '<|reserved_special_token_4|>', '<|eot_id|>', '<|reserved_special_token_5|>', '<|reserved_special_token_6|>')
QWEN2_SPECIALS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>')

INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")

# Pre-tokenizer patterns of the real tokenizer.json files (Llama-3 groups digits by 3, Qwen2 splits them).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r'\p{N}{1,3}', r'\p{N}')

_HUGE_LENGTH = 1000000000000000019884624838656  # transformers' "no limit" as written in real configs
# Chat role names are not in the shapes corpus; train on them so chat prompts stay short.
_ROLE_TEXT = 'system user assistant System User Assistant'


class TinyVocab(NamedTuple):
    """Size of the vocabulary (rows the embedding needs) and the ids of the special tokens."""
    size: int
    ids: dict[str, int]


def training_text() -> list[str]:
    """Lines every tiny tokenizer is trained on: the corpus, role names, and every word alone on a line
    (answers often start a line or follow a newline, where no space precedes them)."""
    lines = corpus() + [_ROLE_TEXT]
    return lines + sorted(set(re.findall(r'[A-Za-z]+', ' '.join(lines))))


def write_json(path: Path, data) -> None:
    """Write a config file the way the real folders look (indented, UTF-8)."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')


def _added_tokens_decoder(ids: dict[str, int]) -> dict[str, dict]:
    return {
        str(i): {'content': token, 'lstrip': False, 'normalized': False, 'rstrip': False,
                 'single_word': False, 'special': True}
        for token, i in sorted(ids.items(), key=lambda item: item[1])
    }


def sentencepiece_model(vocab_size: int = 600) -> bytes:
    """Train the InternLM2-style sentencepiece BPE model and return its serialized proto.

    Trained single-threaded so the bytes are reproducible; user-defined pieces are moved to the end
    of the vocabulary, where the real InternLM2 keeps them (ids are the proto's piece order).
    """
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=buffer, model_type='bpe', vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name='identity', add_dummy_prefix=False, remove_extra_whitespaces=False,
        user_defined_symbols=list(INTERNLM2_SPECIALS), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    user = pb.ModelProto.SentencePiece.USER_DEFINED
    pieces = [p for p in proto.pieces if p.type != user] + [p for p in proto.pieces if p.type == user]
    pieces = [pb.ModelProto.SentencePiece(piece=p.piece, score=p.score, type=p.type) for p in pieces]
    del proto.pieces[:]
    proto.pieces.extend(pieces)
    return proto.SerializeToString()


def write_internlm2_tokenizer(folder: str | Path, added_tokens: tuple[str, ...] = ()) -> TinyVocab:
    """Write an InternLM2 tokenizer folder (``tokenizer.model`` + configs) like internlm2-chat-1_8b.

    ``added_tokens`` (e.g. InternVL2's ``<img>``) get ids after the sentencepiece vocabulary and live
    only in ``tokenizer_config.json``, as in the real InternVL2 folder.
    """
    folder = Path(folder)
    model = sentencepiece_model()
    (folder / 'tokenizer.model').write_bytes(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    base = processor.get_piece_size()
    ids = {token: processor.piece_to_id(token) for token in ('<unk>', '<s>', '</s>') + INTERNLM2_SPECIALS}
    ids.update({token: base + i for i, token in enumerate(added_tokens)})
    specials = list(reversed(INTERNLM2_SPECIALS)) + list(added_tokens)  # real order: <|im_start|> first
    common = {'bos_token': '<s>', 'eos_token': '</s>', 'pad_token': '</s>', 'unk_token': '<unk>'}
    write_json(folder / 'tokenizer_config.json', {
        'added_tokens_decoder': _added_tokens_decoder(ids),
        'additional_special_tokens': specials,
        'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer',
                                       'tokenization_internlm2_fast.InternLM2TokenizerFast']},
        **common,
        'chat_template': INTERNLM2_CHAT_TEMPLATE,
        'clean_up_tokenization_spaces': False,
        'decode_with_prefix_space': False,
        'model_max_length': _HUGE_LENGTH,
        'sp_model_kwargs': None,
        'tokenizer_class': 'InternLM2Tokenizer',
    })
    write_json(folder / 'special_tokens_map.json', {'additional_special_tokens': specials, **common})
    return TinyVocab(base + len(added_tokens), ids)


def _train_byte_level_bpe(pattern: str, nfc: bool, specials: tuple[str, ...]):
    """A byte-level BPE ``tokenizers.Tokenizer`` on the corpus; specials appended after the vocabulary."""
    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(training_text(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return tokenizer


def write_llama3_tokenizer(folder: str | Path) -> TinyVocab:
    """Write a Llama-3-Instruct tokenizer folder: ``tokenizer.json`` + configs, BOS added by the post-processor."""
    folder = Path(folder)
    tokenizer = _train_byte_level_bpe(LLAMA3_PATTERN, nfc=False, specials=LLAMA3_SPECIALS)
    ids = {token: tokenizer.token_to_id(token) for token in LLAMA3_SPECIALS}
    bos = '<|begin_of_text|>'
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f'{bos} $A', pair=f'{bos} $A {bos}:1 $B:1',
                                      special_tokens=[(bos, ids[bos])]),
    ])
    tokenizer.save(str(folder / 'tokenizer.json'))
    write_json(folder / 'tokenizer_config.json', {
        'added_tokens_decoder': _added_tokens_decoder(ids),
        'bos_token': bos,
        'chat_template': LLAMA3_CHAT_TEMPLATE,
        'clean_up_tokenization_spaces': True,
        'eos_token': '<|eot_id|>',
        'model_input_names': ['input_ids', 'attention_mask'],
        'model_max_length': _HUGE_LENGTH,
        'tokenizer_class': 'PreTrainedTokenizerFast',
    })
    write_json(folder / 'special_tokens_map.json', {'bos_token': bos, 'eos_token': '<|eot_id|>'})
    return TinyVocab(tokenizer.get_vocab_size(), ids)


def write_qwen2_tokenizer(folder: str | Path) -> TinyVocab:
    """Write a Qwen2.5-Instruct tokenizer folder: ``tokenizer.json``, ``vocab.json``, ``merges.txt``, configs."""
    folder = Path(folder)
    tokenizer = _train_byte_level_bpe(QWEN2_PATTERN, nfc=True, specials=QWEN2_SPECIALS)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(folder / 'tokenizer.json'))
    tokenizer.model.save(str(folder))  # vocab.json + merges.txt, as the real folder ships them
    ids = {token: tokenizer.token_to_id(token) for token in QWEN2_SPECIALS}
    common = {'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>'}
    write_json(folder / 'tokenizer_config.json', {
        'add_bos_token': False,
        'add_prefix_space': False,
        'added_tokens_decoder': _added_tokens_decoder(ids),
        'additional_special_tokens': list(QWEN2_SPECIALS[1:]),
        'bos_token': None,
        'chat_template': QWEN2_CHAT_TEMPLATE,
        'clean_up_tokenization_spaces': False,
        **common,
        'errors': 'replace',
        'model_max_length': 131072,
        'split_special_tokens': False,
        'tokenizer_class': 'Qwen2Tokenizer',
        'unk_token': None,
    })
    write_json(folder / 'special_tokens_map.json', {'additional_special_tokens': list(QWEN2_SPECIALS[1:]),
                                                     **common})
    return TinyVocab(tokenizer.get_vocab_size(), ids)
