"""Words of the synthetic shapes world, shared by the data generator and the tiny tokenizers.

The tiny tokenizers are trained on ``corpus()`` so every word the synthetic data uses is in
their vocabulary, and answers come out as a few tokens."""
from __future__ import annotations

COLORS = {
    'red': (220, 30, 30),
    'green': (30, 170, 50),
    'blue': (40, 70, 220),
    'yellow': (235, 215, 30),
    'purple': (140, 40, 170),
    'orange': (245, 140, 20),
}
SHAPES = ('circle', 'square', 'triangle')
COUNTS = ('one', 'two', 'three')
POSITIONS = ('left', 'right')

# Words used in chat prompts, captions and seed-style questions, so the tokenizers cover them.
EXTRA_TEXT = (
    'Please describe this picture. Describe this image. What is in the image? '
    'What is the equipment in the image? You are a helpful assistant. '
    'There is a shape in this image. There are shapes in this image. The shape is on the side. '
    'Answer with one word. yes no the a an of is are in on this that image picture photo shape shapes color colour '
    'What color is the shape? What shape is it? How many shapes are there? Which side is the shape on? '
    '0 1 2 3 4 5 6 7 8 9 . , ? ! : ; \' " ( ) - '
)


def corpus() -> list[str]:
    """Sentences covering every word the synthetic data and the default prompts use."""
    lines = [EXTRA_TEXT]
    for color in COLORS:
        for shape in SHAPES:
            for count in COUNTS:
                plural = shape + 's' if count != 'one' else shape
                for pos in POSITIONS:
                    lines.append(f'{count} {color} {plural} on the {pos}.')
                    lines.append(f'A {color} {shape}. The {shape} is {color}. It is a {shape}.')
                    lines.append(f'There are {count} {plural} on the {pos} of the image.')
    return lines
