"""Synthetic shapes data in LLaVA format, whose answers can only be read from the pixels.

Each 64x64 PNG shows one to three shapes of one colour and kind, all on the left or all on the
right half of a light background. Words and questions come from ``mmllava.tiny.vocabulary`` so
the tiny tokenizers cover them. Everything is deterministic from the seed (identical bytes).
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from mmllava.errors import MMLLaVAError
from mmllava.tiny.vocabulary import COLORS, COUNTS, POSITIONS, SHAPES

IMAGE_SIZE = 64
QUESTIONS = {
    'color': 'What color is the shape?',
    'shape': 'What shape is it?',
    'count': 'How many shapes are there?',
    'side': 'Which side is the shape on?',
}
KINDS = tuple(QUESTIONS)
# Shapes stay at least this many pixels wide and tall, so they survive CLIP preprocessing at 64 px.
MIN_SHAPE = 12


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one image shows; ``answer(kind)`` is the one-word gold answer."""

    color: str
    shape: str
    count: int
    side: str

    def answer(self, kind: str) -> str:
        """The one-word answer to the question of ``kind`` (color, shape, count, side)."""
        return {'color': self.color, 'shape': self.shape, 'count': COUNTS[self.count - 1], 'side': self.side}[kind]

    def caption(self) -> str:
        """``two red circles on the left.`` (the corpus' caption sentence)."""
        noun = self.shape if self.count == 1 else self.shape + 's'
        return f'{COUNTS[self.count - 1]} {self.color} {noun} on the {self.side}.'


def random_scene(rng: random.Random) -> Scene:
    """Draw colour, shape, count and side uniformly."""
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randint(1, len(COUNTS)), rng.choice(POSITIONS))


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """Render ``scene``: shapes stacked in separate rows of their half, jittered, no anti-aliasing."""
    grey = rng.randint(235, 255)
    background = (grey, grey, min(255, grey + rng.randint(0, 8)))
    img = Image.new('RGB', (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(img)
    half = IMAGE_SIZE // 2
    x0 = 0 if scene.side == 'left' else half
    row = IMAGE_SIZE // scene.count
    fill = COLORS[scene.color]
    for k in range(scene.count):
        side = rng.randint(MIN_SHAPE + 2, min(row, half) - 4)
        left = x0 + rng.randint(1, half - side - 1)
        top = k * row + rng.randint(1, row - side - 1)
        box = (left, top, left + side - 1, top + side - 1)
        if scene.shape == 'circle':
            draw.ellipse(box, fill=fill)
        elif scene.shape == 'square':
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(left + side // 2, top), (box[2], box[3]), (left, box[3])], fill=fill)
    return img


def _image_turn(question: str) -> dict:
    return {'from': 'human', 'value': '<image>\n' + question}


def _turns(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """[(question, answer), ...] -> LLaVA turns; the image placeholder goes on the first question."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns.append(_image_turn(question) if i == 0 else {'from': 'human', 'value': question})
        turns.append({'from': 'gpt', 'value': answer})
    return turns


def _write_json(path: Path, samples: list[dict]) -> None:
    path.write_text(json.dumps(samples, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')


def build_synthetic_data(out_dir, seed: int = 0, num_train: int = 240, num_eval: int = 48,
                         kinds: Sequence[str] = KINDS) -> dict[str, Path]:
    """Write the shapes data set under ``out_dir`` and return the paths.

    Files: ``images/train_NNNN.png`` and ``images/eval_NNNN.png`` (held-out images);
    ``pretrain.json`` (one caption per train image, human ``<image>\\n``); ``finetune.json``
    (2-3 questions of ``kinds`` per train image, one-word answers, plus ``num_train // 12``
    text-only samples whose answer is in the question); ``eval.json`` (one question per eval
    image, kinds in turn). Returns keys ``pretrain``, ``finetune``, ``eval``, ``image_folder``.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in QUESTIONS]
    if unknown or not kinds:
        raise MMLLaVAError(f'unknown question kinds {unknown or kinds}; valid kinds: {", ".join(KINDS)}')
    out = Path(out_dir)
    images = out / 'images'
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pretrain, finetune, evaluation = [], [], []
    for i in range(num_train):
        scene = random_scene(rng)
        name = f'train_{i:04d}.png'
        draw_scene(scene, rng).save(images / name)
        pretrain.append({'id': f'train_{i:04d}', 'image': name,
                         'conversations': [_image_turn('')] + [{'from': 'gpt', 'value': scene.caption()}]})
        asked = rng.sample(kinds, min(len(kinds), rng.randint(2, 3)))
        finetune.append({'id': f'train_{i:04d}', 'image': name,
                         'conversations': _turns([(QUESTIONS[k], scene.answer(k)) for k in asked])})
    for i in range(num_train // 12):
        # Text-only samples (as LLaVA mixes in): the caption in the question holds the answer.
        scene, kind = random_scene(rng), rng.choice(kinds)
        finetune.append({'id': f'text_{i:04d}', 'conversations': [
            {'from': 'human', 'value': f'{scene.caption()} {QUESTIONS[kind]}'},
            {'from': 'gpt', 'value': scene.answer(kind)}]})
    for i in range(num_eval):
        scene, kind = random_scene(rng), kinds[i % len(kinds)]
        name = f'eval_{i:04d}.png'
        draw_scene(scene, rng).save(images / name)
        evaluation.append({'id': f'eval_{i:04d}', 'image': name,
                           'conversations': _turns([(QUESTIONS[kind], scene.answer(kind))])})
    paths = {'pretrain': out / 'pretrain.json', 'finetune': out / 'finetune.json', 'eval': out / 'eval.json'}
    for key, samples in (('pretrain', pretrain), ('finetune', finetune), ('eval', evaluation)):
        _write_json(paths[key], samples)
    return {**paths, 'image_folder': images}
