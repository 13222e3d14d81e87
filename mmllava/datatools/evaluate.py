"""Accuracy of a chat model on a LLaVA-format data file (``mmllava eval``).

Each sample's last gpt turn is the gold answer; the turns before it are the prompt (history),
answered with greedy decoding. Scoring:

- exact match: the normalised prediction equals the normalised gold answer, or (for a one-word
  gold answer) the prediction's first word does. Normalising = lower case, inner whitespace
  collapsed, surrounding punctuation (ASCII and full-width) stripped.
- multiple choice (samples with ``choices`` and ``answer``, as ``mmllava data foodieqa --eval``
  writes): the prediction is matched to the choice that it equals, else to the choice it mentions
  first (the longest on a tie), else to a leading option letter (``B`` / ``B.``); correct when that
  choice is ``choices[answer]``.
"""
from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path

from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.data.encode import parse_conversation
from mmllava.data.image import load_image, resolve_image_path
from mmllava.data.llava_dataset import read_samples
from mmllava.errors import MMLLaVAError

_PUNCTUATION = string.punctuation + '，。！？；：、“”‘’（）《》【】…'
_OPTION_LETTER = re.compile(r'^\(?([A-Z])(?:[.:)、．]|\s|$)')


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed, punctuation stripped from both ends."""
    return ' '.join(text.lower().split()).strip(_PUNCTUATION + ' ')


def exact_match(prediction: str, gold: str) -> bool:
    """The prediction is the gold answer (normalised), or starts with it as its first word."""
    prediction, gold = normalize(prediction), normalize(gold)
    if prediction == gold:
        return True
    words = prediction.split()
    return ' ' not in gold and bool(words) and words[0].strip(_PUNCTUATION) == gold


def match_choice(prediction: str, choices: list[str]) -> int | None:
    """The index of the choice ``prediction`` gives (see the module docstring), or None."""
    normalized = normalize(prediction)
    options = [normalize(str(choice)) for choice in choices]
    if normalized in options:
        return options.index(normalized)
    found = [(normalized.find(option), -len(option), i) for i, option in enumerate(options)
             if option and option in normalized]
    if found:
        return min(found)[2]
    letter = _OPTION_LETTER.match(prediction.strip())
    if letter and ord(letter.group(1)) - ord('A') < len(choices):
        return ord(letter.group(1)) - ord('A')
    return None


def split_sample(raw: dict) -> tuple[str | None, list[str], str]:
    """``(system, turns, gold)``: the prompt turns (user, assistant, ..., user; placeholders removed)
    and the last gpt answer."""
    system, pairs = parse_conversation(raw.get('conversations') if isinstance(raw, dict) else None)
    turns = [text for pair in pairs for text in pair][:-1]
    turns = [text.replace(DEFAULT_IMAGE_TOKEN, '').strip() for text in turns]
    return system, turns, pairs[-1][1]


def score(raw: dict, prediction: str) -> tuple[bool, dict]:
    """Whether ``prediction`` is right for ``raw``, and the record's scoring fields."""
    if 'choices' in raw and 'answer' in raw:
        chosen = match_choice(prediction, raw['choices'])
        return chosen == int(raw['answer']), {'choice': chosen, 'answer': int(raw['answer'])}
    _, _, gold = split_sample(raw)
    return exact_match(prediction, gold), {'gold': gold}


def sample_image(raw: dict) -> str | None:
    """The image path of a sample (the first, for a list), or ``None``."""
    image = raw.get('image') if isinstance(raw, dict) else None
    if isinstance(image, list):
        image = image[0] if image else None
    return image or None


def check_image_found(image: str, image_folder: str | os.PathLike | None) -> None:
    """A one-line error naming the path tried and where relative paths are read from, when ``image``
    is not a file there."""
    tried = resolve_image_path(image, image_folder).absolute()
    if not tried.is_file():
        where = (f'read relative to --image-folder {image_folder}' if image_folder is not None else
                 f'read relative to the current folder {Path.cwd()}; pass --image-folder DIR, the folder the '
                 "data file's image paths are relative to")
        raise MMLLaVAError(f'image file not found: {tried} ({where})')


def default_image_folder(data_path: str | os.PathLike, samples: list) -> Path | None:
    """Where ``eval`` reads a data file's relative image paths when ``--image-folder`` is not given:
    the current folder if they resolve there, else the data file's folder, else its ``images/``
    (the layout of ``data/synthetic``); ``None`` (the current folder) when none holds them all."""
    images = [image for image in map(sample_image, samples) if image]
    data_dir = Path(data_path).parent
    for folder in (None, data_dir, data_dir / 'images'):
        if images and all((Path(image) if folder is None else folder / image).is_file() for image in images):
            return folder
    return None


def predict(session, raw: dict, image_folder: str | os.PathLike | None, system: str | None = None) -> str:
    """``session``'s answer to ``raw``'s prompt (its image before the first question); the sample's
    own system turn, else ``system``, else the template's default."""
    own_system, turns, _ = split_sample(raw)
    session.reset()
    session.system = own_system if own_system is not None else system
    image = sample_image(raw)
    pixels = None
    if image:
        check_image_found(image, image_folder)
        pixels = load_image(image, image_folder) if image_folder is not None else load_image(image)
    if pixels is not None and len(turns) > 1:
        # The image belongs to the first question, which here is history.
        session.images = [session.chat_model.pixel_values(pixels)]
        turns[0] = f'{DEFAULT_IMAGE_TOKEN}\n{turns[0]}'
        pixels = None
    session.turns = turns[:-1]
    return session.ask(turns[-1], image=pixels)


def evaluate(session, data_path: str | os.PathLike, image_folder: str | os.PathLike | None = None,
             out_path: str | os.PathLike | None = None, limit: int | None = None,
             progress=None, system: str | None = None) -> dict:
    """Answer every sample of ``data_path`` (the first ``limit``); write one JSON record per sample
    to ``out_path``; ``progress(record)`` is called after each; ``system`` as in ``predict``;
    ``image_folder`` ``None``: see :func:`default_image_folder`.
    Returns ``{'total', 'correct', 'accuracy', 'multiple_choice', 'image_folder'}``: how many samples
    were multiple-choice, and the image folder used."""
    samples = read_samples(data_path)[:limit]
    if not samples:
        raise MMLLaVAError(f'{data_path}: no samples to evaluate')
    if image_folder is None:
        image_folder = default_image_folder(data_path, samples)
    out = None
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, 'w', encoding='utf-8')
    correct = multiple_choice = 0
    try:
        for index, raw in enumerate(samples):
            try:
                prediction = predict(session, raw, image_folder, system)
                right, fields = score(raw, prediction)
            except MMLLaVAError as e:
                raise MMLLaVAError(f'{data_path}:{index}: {e}') from None
            correct += right
            multiple_choice += 'choice' in fields
            record = {'index': index, 'id': raw.get('id'), 'prediction': prediction, **fields, 'correct': right}
            if out is not None:
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
            if progress is not None:
                progress(record)
    finally:
        if out is not None:
            out.close()
    return {'total': len(samples), 'correct': correct, 'accuracy': correct / len(samples),
            'multiple_choice': multiple_choice, 'image_folder': image_folder}
