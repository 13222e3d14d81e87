"""Stop words and streaming in one place: a ``StoppingCriteria`` that decodes the answer so far at
every step, stops at the template's stop words (which need not be single tokens, e.g. ``plain``'s
newline) and hands each new piece of text to a callback.

Text that could still turn into a stop word (a prefix of one at the end of the answer), an
incomplete UTF-8 character and a trailing run of byte-fallback tokens (which decode together) are
held back until the next token decides, so a streamed answer never shows part of a stop word and
always equals the final answer.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria


def cut_at_stop_word(text: str, stop_words: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop word, and whether one was found."""
    cut = min((i for i in (text.find(w) for w in stop_words if w) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _stable_length(text: str, stop_words: Sequence[str]) -> int:
    """How much of ``text`` can be shown: not a trailing partial stop word or replacement char."""
    end = len(text)
    for word in stop_words:
        for k in range(min(len(word) - 1, len(text)), 0, -1):
            if text.endswith(word[:k]):
                end = min(end, len(text) - k)
                break
    while end and text[end - 1] == '\ufffd':  # a multi-byte character still being generated
        end -= 1
    return end


def _trailing_byte_tokens(tokenizer, ids: Sequence[int]) -> int:
    """How many of the last ``ids`` are byte-fallback tokens (``<0x09>``), whose text can still change."""
    convert = getattr(tokenizer, 'convert_ids_to_tokens', None)
    if convert is None:
        return 0
    count = 0
    for token in reversed(convert(list(ids[-16:]))):  # a UTF-8 character is at most 4 bytes
        if not (isinstance(token, str) and len(token) == 6 and token.startswith('<0x') and token.endswith('>')):
            break
        count += 1
    return count


class StopWordStreamer(StoppingCriteria):
    """Stop at ``stop_words`` and stream text to ``callback(piece)``.

    ``prompt_length`` is how many ids at the start of ``input_ids`` are the prompt (0 when
    generating from embeddings, where transformers passes only the new tokens).
    ``skip_ids`` are ids left out of the text (EOS, pad).
    """

    def __init__(self, tokenizer, stop_words: Sequence[str], prompt_length: int = 0,
                 callback: Callable[[str], None] | None = None, skip_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop_words = tuple(w for w in stop_words if w)
        self.prompt_length = prompt_length
        self.callback = callback
        self.skip_ids = set(skip_ids)
        self.shown = 0
        self.text = ''
        self.stopped = False  # whether a stop word ended the answer

    def decode(self, ids: Sequence[int]) -> tuple[str, bool]:
        """The answer text of generated ``ids`` (skipped ids removed, cut at the first stop word)
        and whether a stop word ended it."""
        text = self.tokenizer.decode([i for i in ids if i not in self.skip_ids], skip_special_tokens=False)
        return cut_at_stop_word(text, self.stop_words)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        ids = input_ids[0, self.prompt_length:].tolist()
        self.text, stopped = self.decode(ids)
        if stopped:
            self._emit(len(self.text))
        else:
            # A trailing run of byte tokens (<0xNN>) decodes as one piece: a valid byte shown now
            # (a tab) may turn into U+FFFD when an invalid byte joins the run, so it waits.
            open_run = _trailing_byte_tokens(self.tokenizer, ids)
            stable = self.decode(ids[:len(ids) - open_run])[0] if open_run else self.text
            self._emit(_stable_length(stable, self.stop_words))
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)

    def finish(self, ids: Sequence[int]) -> str:
        """Emit what was held back and return the final answer for the generated ``ids``."""
        self.text, self.stopped = self.decode(ids)
        self._emit(len(self.text))
        return self.text

    def _emit(self, end: int) -> None:
        if end > self.shown:
            if self.callback is not None:
                self.callback(self.text[self.shown:end])
            self.shown = end
