"""A Jinja ``chat_template`` equal to a prompt template, for exported tokenizers.

Serving engines (vLLM, LMDeploy, transformers' ``apply_chat_template``) take the prompt format from
the tokenizer, so an export must render exactly what ``mmllava.templates.render_prompt`` renders:
the same role markers, the default system prompt, and the image placeholder moved to the front of
the user's text followed by a newline. Message content may be a string (with image placeholders) or
a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts.

The placeholder is the one the export's processor expands: ``<image>`` for LLaVA (and for official
InternVL folders, whose own code and vLLM replace ``<image>``), ``<IMG_CONTEXT>`` for transformers'
``InternVLProcessor``, which expands only its tokenizer's ``context_image_token``.
"""
from __future__ import annotations

import json

from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.templates import PromptTemplate, get_template


def _literal(text: str) -> str:
    """``{{ "text" }}``: a JSON string is a valid Jinja string literal (escapes included)."""
    return '{{ ' + json.dumps(text) + ' }}' if text else ''


def jinja_chat_template(template: str | PromptTemplate, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """The Jinja source rendering ``template`` with ``image_token`` as the image placeholder (user
    turns already end with the assistant header, as in XTuner's templates, so
    ``add_generation_prompt`` adds nothing)."""
    t = get_template(template)
    system_before, has_system, system_after = t.system.partition('{system}')
    input_before, _, input_after = t.instruction.partition('{input}')
    image = json.dumps(image_token)
    words = "''" if t.images_only_input else f'text.replace({image}, "").strip()'
    return ''.join([
        '{%- set ns = namespace(system=' + json.dumps(t.default_system or '') + ', first=true) -%}',
        '{%- if bos_token -%}{{ bos_token }}{%- endif -%}' if t.bos == 'tokenizer' else '',
        '{%- for message in messages -%}',
        '{%- if message["content"] is string -%}{%- set text = message["content"] -%}{%- set n = 0 -%}',
        '{%- else -%}',
        '{%- set text = message["content"] | selectattr("type", "equalto", "text") | map(attribute="text")'
        ' | join("\\n") -%}',
        '{%- set n = message["content"] | selectattr("type", "equalto", "image") | list | length -%}',
        '{%- endif -%}',
        '{%- if message["role"] == "system" -%}{%- set ns.system = text -%}',
        '{%- elif message["role"] == "user" -%}',
        f'{{%- set n = n + text.count({image}) -%}}',
        f'{{%- set words = {words} -%}}',
        f'{{%- if n > 0 -%}}{{%- set words = {image} * n + ("\\n" + words if words else "") -%}}{{%- endif -%}}',
        '{%- if ns.first and ns.system -%}', _literal(system_before),
        '{{ ns.system }}' if has_system else '', _literal(system_after),
        '{%- endif -%}',
        _literal(input_before), '{{ words }}', _literal(input_after),
        '{%- set ns.first = false -%}',
        '{%- else -%}{{ text }}', _literal(t.suffix + t.sep),
        '{%- endif -%}',
        '{%- endfor -%}',
    ])
