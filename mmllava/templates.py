"""Prompt templates: the role markers that wrap each turn of a conversation.

The templates follow XTuner's ``PROMPT_TEMPLATE`` (``SYSTEM``, ``INSTRUCTION``, ``SUFFIX``,
``SUFFIX_AS_EOS``, ``SEP``, ``STOP_WORDS``) so that a model fine-tuned here sees exactly the
strings XTuner and the models' own chat templates produce. ``plain`` is LLaVA's pretraining
format: the image and the caption, nothing else.

Layout of one conversation (``encode_conversation`` labels the parts marked *trained*)::

    [BOS] system.format(system) instruction.format(input=q1)  a1 suffix [EOS]  sep
                                instruction.format(input=q2)  a2 suffix [EOS]  sep
          `------------------ ignored -----------------------' `-- trained --'  ignored

``[EOS]`` is the tokenizer's end token, added only when ``suffix_as_eos`` is False.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.errors import MMLLaVAError

BOS_POLICIES = ('tokenizer', 'none')


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """Role markers of one chat format.

    ``system`` and ``instruction`` are format strings with ``{system}`` and ``{input}``;
    ``suffix`` ends every answer and is trained; with ``suffix_as_eos`` it *is* the end token,
    otherwise the tokenizer's EOS follows it. ``sep`` follows each answer and is not trained.
    ``bos``: ``'tokenizer'`` prepends the tokenizer's BOS token when it has one, ``'none'`` never
    does. ``images_only_input`` drops the user's words and keeps only ``<image>`` (LLaVA's
    ``plain`` pretraining format, whose instruction text carries no information).
    """

    name: str
    system: str = '{system}'
    instruction: str = '{input}'
    suffix: str = ''
    suffix_as_eos: bool = True
    sep: str = ''
    stop_words: tuple[str, ...] = ()
    default_system: str | None = None
    bos: str = 'tokenizer'
    images_only_input: bool = False

    def __post_init__(self):
        if self.bos not in BOS_POLICIES:
            raise MMLLaVAError(f'template {self.name!r}: bos must be one of {BOS_POLICIES}, got {self.bos!r}')
        if '{input}' not in self.instruction:
            raise MMLLaVAError(f'template {self.name!r}: instruction must contain {{input}}')

    def user_prompt(self, text: str, system: str | None = None) -> str:
        """The prompt of one user turn, up to where the assistant's answer starts.

        ``<image>`` placeholders are moved to the front of the text followed by a newline, as
        LLaVA's ``preprocess_multimodal`` and XTuner's ``llava_map_fn`` do, so the position of the
        placeholder in the data does not change what the model sees. ``system`` (if given and
        non-empty) is put before the first turn's instruction.
        """
        num_images = text.count(DEFAULT_IMAGE_TOKEN)
        words = '' if self.images_only_input else text.replace(DEFAULT_IMAGE_TOKEN, '').strip()
        if num_images:
            words = DEFAULT_IMAGE_TOKEN * num_images + ('\n' + words if words else '')
        prompt = self.instruction.format(input=words)
        if system:
            prompt = self.system.format(system=system) + prompt
        return prompt

    def answer(self, text: str) -> str:
        """The trained part of an assistant turn: the answer and the suffix."""
        return text + self.suffix


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate(
            name='internlm2_chat',
            system='<|im_start|>system\n{system}<|im_end|>\n',
            instruction='<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n',
            suffix='<|im_end|>',
            sep='\n',
            stop_words=('<|im_end|>',),
        ),
        PromptTemplate(
            name='llama3_chat',
            system='<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>',
            instruction=('<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>'
                         '<|start_header_id|>assistant<|end_header_id|>\n\n'),
            suffix='<|eot_id|>',
            stop_words=('<|eot_id|>',),
        ),
        PromptTemplate(
            name='qwen_chat',
            system='<|im_start|>system\n{system}<|im_end|>\n',
            instruction='<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n',
            suffix='<|im_end|>',
            sep='\n',
            stop_words=('<|im_end|>', '<|endoftext|>'),
            bos='none',  # Qwen2.5 has no BOS token
        ),
        PromptTemplate(
            name='vicuna',
            system='{system} ',
            instruction='USER: {input} ASSISTANT:',
            suffix='</s>',
            stop_words=('</s>',),
            # LLaVA v1's conv_vicuna_v1 system prompt.
            default_system=('A chat between a curious user and an artificial intelligence assistant. '
                            "The assistant gives helpful, detailed, and polite answers to the user's questions."),
        ),
        PromptTemplate(
            name='plain',
            system='',  # LLaVA's pretraining format has no system prompt
            instruction='{input}',
            suffix='\n',
            stop_words=('\n',),
            images_only_input=True,
        ),
    )
}


def get_template(name: str | PromptTemplate) -> PromptTemplate:
    """Return the template called ``name`` (a ``PromptTemplate`` is returned as it is)."""
    if isinstance(name, PromptTemplate):
        return name
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise MMLLaVAError(f'unknown prompt template {name!r}; valid names: {", ".join(TEMPLATES)}') from None


def render_prompt(template: str | PromptTemplate, turns: Sequence[str], system: str | None = None) -> str:
    """Render a chat for generation: ``turns`` alternate user, assistant, ..., and end with a user turn.

    Returns the text up to where the assistant's next answer starts, without BOS (prepend the
    tokenizer's BOS when ``template.bos == 'tokenizer'``). ``system=None`` uses the template's
    default system prompt. ``<image>`` stays in the text; tokenise it with
    ``mmllava.data.encode.tokenize_with_images``.
    """
    template = get_template(template)
    if len(turns) % 2 != 1:
        raise MMLLaVAError(f'render_prompt needs an odd number of turns ending with the user, got {len(turns)}')
    system = template.default_system if system is None else system
    parts = []
    for i in range(0, len(turns), 2):
        parts.append(template.user_prompt(turns[i], system if i == 0 else None))
        if i + 1 < len(turns):
            parts.append(template.answer(turns[i + 1]) + template.sep)
    return ''.join(parts)
