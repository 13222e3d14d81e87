"""Conversation -> ``input_ids`` / ``labels`` for training, following XTuner's ``encode_fn``.

Each turn is tokenised in three pieces: the prompt (system on the first turn + instruction with
the user's text; label ``IGNORE_INDEX``), the answer with the template's suffix (and EOS when the
suffix is not the end token; labels = ids) and the separator (ignored). ``<image>`` becomes
``num_image_tokens`` positions of ``IMAGE_TOKEN_INDEX``; the text on either side of it is
tokenised separately so no token ever spans the placeholder.
"""
from __future__ import annotations

from typing import Any, Sequence

from mmllava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.errors import MMLLaVAError, PlaceholderError, TruncationError
from mmllava.templates import PromptTemplate, get_template


def tokenize_with_images(text: str, tokenizer, num_image_tokens: int) -> list[int]:
    """Tokenise ``text`` without special-token additions, each ``<image>`` -> image positions."""
    ids: list[int] = []
    chunks = text.split(DEFAULT_IMAGE_TOKEN)
    for i, chunk in enumerate(chunks):
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
        if i < len(chunks) - 1:
            ids.extend([IMAGE_TOKEN_INDEX] * num_image_tokens)
    return ids


def bos_ids(tokenizer, template: PromptTemplate) -> list[int]:
    """``[bos_token_id]`` when the template's BOS policy and the tokenizer call for it, else ``[]``."""
    bos = getattr(tokenizer, 'bos_token_id', None)
    return [bos] if template.bos == 'tokenizer' and bos is not None else []


def parse_conversation(conversations: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """Validate LLaVA-form turns; return ``(system or None, [(human, gpt), ...])``.

    Raises ``MMLLaVAError`` with the reason: roles must be an optional leading ``system``, then
    ``human`` and ``gpt`` alternating, starting with ``human`` and ending with ``gpt``; values must
    be strings; answers and questions must not be empty; ``<image>`` only in human turns.
    """
    if not isinstance(conversations, list) or not conversations:
        raise MMLLaVAError('conversations must be a non-empty list of {"from", "value"} turns')
    system = None
    turns = list(conversations)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or 'from' not in turn or 'value' not in turn:
            raise MMLLaVAError(f'turn {i}: expected an object with "from" and "value", got {turn!r:.80}')
        if not isinstance(turn['value'], str):
            raise MMLLaVAError(f'turn {i}: value must be a string, got {type(turn["value"]).__name__}')
    offset = 0
    if turns[0]['from'] == 'system':
        system, offset = turns[0]['value'], 1
    pairs = []
    for i in range(offset, len(turns), 2):
        if turns[i]['from'] != 'human':
            raise MMLLaVAError(f'turn {i}: expected role "human", got {turns[i]["from"]!r} '
                               '(roles must alternate human/gpt, starting with human)')
        if i + 1 == len(turns):
            raise MMLLaVAError(f'turn {i}: the conversation ends with a human turn that has no gpt answer')
        if turns[i + 1]['from'] != 'gpt':
            raise MMLLaVAError(f'turn {i + 1}: expected role "gpt", got {turns[i + 1]["from"]!r} '
                               '(roles must alternate human/gpt, starting with human)')
        human, answer = turns[i]['value'], turns[i + 1]['value']
        if not human.strip():
            raise MMLLaVAError(f'turn {i}: empty human message')
        if not answer.strip():
            raise MMLLaVAError(f'turn {i + 1}: empty gpt answer')
        if DEFAULT_IMAGE_TOKEN in answer:
            raise PlaceholderError(f'turn {i + 1}: {DEFAULT_IMAGE_TOKEN} placeholder in a gpt answer')
        pairs.append((human, answer))
    if not pairs:
        raise MMLLaVAError('conversation has no human/gpt turn')
    if system is not None and DEFAULT_IMAGE_TOKEN in system:
        raise PlaceholderError(f'turn 0: {DEFAULT_IMAGE_TOKEN} placeholder in the system message')
    return system, pairs


def encode_conversation(conversations: Sequence[dict], tokenizer, template: str | PromptTemplate,
                        num_image_tokens: int, max_length: int, system: str | None = None) -> dict:
    """Encode LLaVA-form ``conversations`` into ``dict(input_ids, labels)`` (lists of ints).

    The system prompt is, in order of precedence, the conversation's own ``system`` turn,
    ``system``, the template's default. Sequences longer than ``max_length`` lose whole trailing
    turns, so an image's positions are never cut; if that would drop a turn holding an image, or
    not even the first turn fits (no trained token would be left), ``MMLLaVAError`` is raised.
    """
    template = get_template(template)
    own_system, pairs = parse_conversation(conversations)
    if own_system is not None:
        system = own_system
    elif system is None:
        system = template.default_system
    input_ids = bos_ids(tokenizer, template)
    labels = [IGNORE_INDEX] * len(input_ids)
    eos = []
    if not template.suffix_as_eos:
        if tokenizer.eos_token_id is None:
            raise MMLLaVAError(f'template {template.name!r} needs an EOS token but the tokenizer has none')
        eos = [tokenizer.eos_token_id]
    sep = tokenizer.encode(template.sep, add_special_tokens=False) if template.sep else []
    for turn, (human, answer) in enumerate(pairs):
        prompt = tokenize_with_images(template.user_prompt(human, system if turn == 0 else None),
                                      tokenizer, num_image_tokens)
        target = tokenizer.encode(template.answer(answer), add_special_tokens=False) + eos
        needed = len(input_ids) + len(prompt) + len(target)
        if needed > max_length:
            _check_truncation(pairs, turn, max_length, needed)
            break
        room = max_length - needed  # the untrained separator after the last kept turn may be cut
        input_ids += prompt + target + sep[:room]
        labels += [IGNORE_INDEX] * len(prompt) + target + [IGNORE_INDEX] * len(sep[:room])
    return dict(input_ids=input_ids, labels=labels)


def _check_truncation(pairs: list[tuple[str, str]], first_dropped: int, max_length: int, needed: int):
    """Raise when dropping ``pairs[first_dropped:]`` leaves nothing trained or loses the image."""
    if first_dropped == 0:
        raise TruncationError(f'no trained tokens after truncation to max_length={max_length}: '
                           f'the first turn alone needs {needed} tokens')
    for k in range(first_dropped, len(pairs)):
        if DEFAULT_IMAGE_TOKEN in pairs[k][0]:
            raise TruncationError(f'truncation to max_length={max_length} would drop human/gpt pair {k + 1} '
                               f'which holds the {DEFAULT_IMAGE_TOKEN}')
