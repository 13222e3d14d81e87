"""Multi-turn chat on a :class:`~mmllava.chat.loader.ChatModel`: history, images, sampling settings,
stop words and streaming.

Each turn renders the whole conversation with the template (as XTuner's chat does), so the model
sees exactly the training format; an image given with a turn is placed before that turn's text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mmllava.chat.loader import ChatModel
from mmllava.chat.streaming import StopWordStreamer
from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.errors import MMLLaVAError
from mmllava.templates import render_prompt


@dataclass
class GenerationSettings:
    """Sampling settings; ``temperature=0`` means greedy decoding, ``top_k=0`` no top-k filter."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    extra: dict = field(default_factory=dict)  # more ``generate`` arguments (a hook's ``generation_kwargs``)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``generate``."""
        if self.max_new_tokens < 1:
            raise MMLLaVAError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise MMLLaVAError('temperature must be >= 0, top_p in (0, 1], top_k >= 0, repetition_penalty > 0')
        kwargs = {'max_new_tokens': self.max_new_tokens, 'repetition_penalty': self.repetition_penalty}
        if self.temperature == 0:
            return {**kwargs, 'do_sample': False, 'temperature': None, 'top_p': None, 'top_k': None, **self.extra}
        return {**kwargs, 'do_sample': True, 'temperature': self.temperature, 'top_p': self.top_p,
                'top_k': self.top_k or None, **self.extra}


@dataclass
class Usage:
    """Token counts of the last answer (OpenAI's ``usage``) and why it ended: ``stop`` (EOS or a stop
    word) or ``length`` (``max_new_tokens`` reached)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def end_token_ids(chat_model: ChatModel) -> list[int]:
    """Ids that end generation: the tokenizer's and generation config's EOS and single-token stop words."""
    tokenizer = chat_model.tokenizer
    ids = []
    generation_config = getattr(chat_model.model, 'generation_config', None) or getattr(
        getattr(chat_model.model, 'llm', None), 'generation_config', None)
    declared = getattr(generation_config, 'eos_token_id', None)
    for token_id in [tokenizer.eos_token_id, *(declared if isinstance(declared, list) else [declared])]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    for word in chat_model.template.stop_words:
        word_ids = tokenizer.encode(word, add_special_tokens=False)
        if len(word_ids) == 1 and word_ids[0] not in ids:
            ids.append(word_ids[0])
    return ids


class ChatSession:
    """A conversation with one model. ``ask`` answers a user turn and remembers it.

    ``system`` is the system prompt (``None``: the template's default); ``settings`` the sampling
    settings; ``seed`` re-seeds torch before every answer (reproducible sampling).
    """

    def __init__(self, chat_model: ChatModel, system: str | None = None,
                 settings: GenerationSettings | None = None, seed: int | None = None):
        self.chat_model = chat_model
        self.system = system
        self.settings = settings or GenerationSettings()
        self.seed = seed
        self.turns: list[str] = []
        self.images: list[torch.Tensor] = []
        self.usage: Usage | None = None

    def reset(self) -> None:
        """Forget the conversation (history and images)."""
        self.turns, self.images = [], []

    def ask(self, text: str, image=None, stream_callback: Callable[[str], None] | None = None) -> str:
        """Answer ``text`` (with an optional PIL ``image``, or a list of them); ``stream_callback`` gets
        the answer piece by piece while it is generated. Returns the whole answer (stop words removed);
        ``self.usage`` then holds its token counts."""
        turn, images = self._user_turn(text, image)
        turns = [*self.turns, turn]
        input_ids = self.chat_model.prompt_ids(render_prompt(self.chat_model.template, turns, self.system), images)
        stop_ids = end_token_ids(self.chat_model)
        streamer = StopWordStreamer(self.chat_model.tokenizer, self.chat_model.template.stop_words,
                                    self.chat_model.prompt_length_in_output(input_ids), stream_callback, stop_ids)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        pad_id = self.chat_model.tokenizer.pad_token_id
        new_ids = self.chat_model.generate(
            input_ids, torch.cat(images) if images else None, eos_token_id=stop_ids,
            pad_token_id=pad_id if pad_id is not None else stop_ids[0], stopping_criteria=[streamer],
            **self.settings.generate_kwargs())
        answer = streamer.finish(new_ids)
        ended = streamer.stopped or bool(new_ids) and new_ids[-1] in stop_ids
        self.usage = Usage(input_ids.shape[1], len(new_ids),
                           'length' if len(new_ids) >= self.settings.max_new_tokens and not ended else 'stop')
        self.turns, self.images = [*turns, answer], images
        return answer

    def remember(self, text: str, answer: str, image=None) -> None:
        """Add a past exchange (the user's ``text`` with its ``image``(s), and the ``answer``) to the
        history without generating: replaying a conversation kept elsewhere, as an API request does."""
        turn, self.images = self._user_turn(text, image)
        self.turns = [*self.turns, turn, answer]

    def _user_turn(self, text: str, image) -> tuple[str, list[torch.Tensor]]:
        """The user turn as the template sees it (one ``<image>`` line per image, before the text) and
        all the conversation's pixel values with this turn's appended."""
        if DEFAULT_IMAGE_TOKEN in text:
            raise MMLLaVAError(f'{DEFAULT_IMAGE_TOKEN} in a message: pass images with the image argument')
        new = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
        pixels = [self.chat_model.pixel_values(img) for img in new]
        return f'{DEFAULT_IMAGE_TOKEN}\n' * len(new) + text, [*self.images, *pixels]
