"""Load a local tokenizer folder as a fast tokenizer with its special tokens and a pad token.

InternLM2 folders name the remote-code ``InternLM2Tokenizer`` and ship only a sentencepiece
``tokenizer.model``. Instead of running their code, the sentencepiece BPE model is rebuilt with
``tokenizers`` primitives here (tests pin its ids to the ``sentencepiece`` library's own): the
transformers converters changed behaviour between releases (in 5.23 the conversion needs protobuf and
falls back to a tiktoken reader without it; a ``LlamaTokenizer(vocab_file=...)`` built directly gave
empty ids; a folder naming ``LlamaTokenizer`` gave the ids without BOS) and this does not.
Other folders load with ``AutoTokenizer``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmllava.errors import MMLLaVAError, concerning
from mmllava.paths import require_dir
from mmllava.pretrained.folder_reading import read_json

WHAT = 'tokenizer'
# Preferred pad tokens when a tokenizer has none, in order (Llama-3.1, Llama-3, Qwen/GPT style).
_PAD_CANDIDATES = ('<|finetune_right_pad_id|>', '<|reserved_special_token_0|>', '<|endoftext|>')


def _token_text(token) -> str | None:
    """A special token as written in a tokenizer config: a string or ``{"content": ...}``."""
    return token.get('content') if isinstance(token, dict) else token


def _sentencepiece_bpe(model_file: Path):
    """A ``tokenizers.Tokenizer`` equal to a sentencepiece BPE model, and the parsed proto."""
    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise MMLLaVAError(f'{WHAT}: {model_file} is not a sentencepiece BPE model')
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL}
    # sentencepiece BPE ranks merges by the merged piece's position; every split of a piece into two
    # known normal pieces is a merge producing it.
    merges = sorted(
        ((piece[:k], piece[k:]) for piece in normal for k in range(1, len(piece))
         if piece[:k] in normal and piece[k:] in normal),
        key=lambda pair: (vocab[pair[0] + pair[1]], vocab[pair[0]], vocab[pair[1]]))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=proto.trainer_spec.unk_piece,
                                     fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback))
    if proto.normalizer_spec.precompiled_charsmap:
        tokenizer.normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    # sentencepiece adds its dummy prefix once, before the whole text: Metaspace's 'first' scheme.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement='▁', prepend_scheme='first' if dummy_prefix else 'never', split=False)
    steps = [decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(' ', 1, 0)] if dummy_prefix else []))
    return tokenizer, proto


def _internlm2_tokenizer(folder: Path, tok_cfg: dict):
    """The fast equivalent of InternLM2Tokenizer: BOS added, the config's added tokens at their ids."""
    tokenizer, proto = _sentencepiece_bpe(folder / 'tokenizer.model')
    declared = {int(i): (_token_text(t), t.get('special', True)) for i, t in
                (tok_cfg.get('added_tokens_decoder') or {}).items()}
    if (folder / 'added_tokens.json').is_file():
        extra = json.loads((folder / 'added_tokens.json').read_text(encoding='utf-8'))
        declared.update({int(i): (text, True) for text, i in extra.items() if int(i) not in declared})
    # sentencepiece's user-defined and control pieces (<|im_start|>, <s>...) must never be split.
    unsplittable = (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED)
    for i, piece in enumerate(proto.pieces):
        if piece.type in unsplittable and i not in declared:
            declared[i] = (piece.piece, True)
    for token_id, (text, special) in sorted(declared.items()):
        tokenizer.add_tokens([AddedToken(text, special=special, normalized=False)])
        if tokenizer.token_to_id(text) != token_id:
            raise MMLLaVAError(f'{WHAT}: {folder}: added token {text!r} should have id {token_id}, '
                               f'the vocabulary gives {tokenizer.token_to_id(text)}')
    names = {key: _token_text(tok_cfg.get(key)) or default for key, default in
             (('bos_token', '<s>'), ('eos_token', '</s>'), ('unk_token', '<unk>'))}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, **names, pad_token=_token_text(tok_cfg.get('pad_token')),
        additional_special_tokens=[_token_text(t) for t in tok_cfg.get('additional_special_tokens', [])],
        add_bos_token=tok_cfg.get('add_bos_token', True), add_eos_token=tok_cfg.get('add_eos_token', False),
        chat_template=tok_cfg.get('chat_template'), clean_up_tokenization_spaces=False,
        model_max_length=tok_cfg.get('model_max_length', int(1e30)), name_or_path=str(folder))


def _ensure_pad_token(tokenizer) -> None:
    """Give tokenizers without one a pad token: a reserved/pad token if the vocabulary has one, else unk/eos."""
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    candidates = [t for t in _PAD_CANDIDATES if t in vocab] + [tokenizer.unk_token, tokenizer.eos_token]
    tokenizer.pad_token = next(t for t in candidates if t is not None)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """Load the tokenizer in the local folder ``path`` (a fast ``PreTrainedTokenizerBase``).

    InternLM2 sentencepiece folders are rebuilt without remote code unless ``trust_remote_code``;
    others go through ``AutoTokenizer``. ``pad_token`` is always set on the result.
    """
    with concerning(WHAT, path):  # what fails inside is about this setting's value
        folder = require_dir(path, WHAT)
        config_file = folder / 'tokenizer_config.json'
        tok_cfg = read_json(config_file, WHAT) if config_file.is_file() else {}
        internlm2 = str(tok_cfg.get('tokenizer_class', '')).startswith('InternLM2Tokenizer')
        if internlm2 and not trust_remote_code and (folder / 'tokenizer.model').is_file():
            tokenizer = _internlm2_tokenizer(folder, tok_cfg)
        else:
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            except (OSError, ValueError) as e:
                raise MMLLaVAError(f'{WHAT}: cannot load {folder}: {str(e).splitlines()[0]}') from e
        _ensure_pad_token(tokenizer)
        return tokenizer
