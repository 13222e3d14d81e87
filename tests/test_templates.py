"""Prompt templates: exact strings, and exact ids against the tiny models' tokenizers."""
import pytest

from mmllava.errors import MMLLaVAError
from mmllava.templates import TEMPLATES, PromptTemplate, get_template, render_prompt

TURNS = ['<image>\nWhat color is the shape?', 'red', 'What shape is it?']
EXPECTED = {
    'internlm2_chat': ('<|im_start|>system\nBe brief.<|im_end|>\n'
                       '<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n<|im_start|>assistant\n'
                       'red<|im_end|>\n'
                       '<|im_start|>user\nWhat shape is it?<|im_end|>\n<|im_start|>assistant\n'),
    'qwen_chat': ('<|im_start|>system\nBe brief.<|im_end|>\n'
                  '<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n<|im_start|>assistant\n'
                  'red<|im_end|>\n'
                  '<|im_start|>user\nWhat shape is it?<|im_end|>\n<|im_start|>assistant\n'),
    'llama3_chat': ('<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>'
                    '<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat color is the shape?<|eot_id|>'
                    '<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>'
                    '<|start_header_id|>user<|end_header_id|>\n\nWhat shape is it?<|eot_id|>'
                    '<|start_header_id|>assistant<|end_header_id|>\n\n'),
    'vicuna': 'Be brief. USER: <image>\nWhat color is the shape? ASSISTANT:red</s>USER: What shape is it? ASSISTANT:',
    'plain': '<image>red\n',
}
# Which tiny model's tokenizer goes with which template.
TOKENIZER_OF = {'internlm2_chat': 'internlm2_chat', 'llama3_chat': 'llama3_instruct', 'qwen_chat': 'qwen2_5_instruct'}


@pytest.fixture(scope='module')
def tokenizers(tiny_zoo):
    from mmllava.pretrained import load_tokenizer

    return {name: load_tokenizer(tiny_zoo[model]) for name, model in TOKENIZER_OF.items()}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_render_prompt_exact_strings(name):
    turns = TURNS[:2] + [''] if name == 'plain' else TURNS
    rendered = render_prompt(name, turns, system='Be brief.')
    assert rendered == EXPECTED[name]


def test_template_fields_follow_xtuner():
    assert TEMPLATES['internlm2_chat'].stop_words == ('<|im_end|>',)
    assert TEMPLATES['qwen_chat'].stop_words == ('<|im_end|>', '<|endoftext|>')
    assert TEMPLATES['qwen_chat'].bos == 'none' and TEMPLATES['llama3_chat'].bos == 'tokenizer'
    assert TEMPLATES['llama3_chat'].sep == '' and TEMPLATES['internlm2_chat'].sep == '\n'
    assert render_prompt('vicuna', ['Hi']).startswith('A chat between a curious user')
    assert get_template(TEMPLATES['plain']) is TEMPLATES['plain']


def test_image_placeholder_moves_to_the_front():
    template = get_template('internlm2_chat')
    assert template.user_prompt('What is this?\n<image>') == template.user_prompt('<image>\nWhat is this?')
    assert get_template('plain').user_prompt('Describe this image.\n<image>\n') == '<image>'


def test_errors():
    with pytest.raises(MMLLaVAError, match='unknown prompt template .llama2.; valid names: internlm2_chat, '
                                           'llama3_chat, qwen_chat, vicuna, plain'):
        get_template('llama2')
    with pytest.raises(MMLLaVAError, match='odd number of turns'):
        render_prompt('plain', ['q', 'a'])
    with pytest.raises(MMLLaVAError, match='bos must be one of'):
        PromptTemplate(name='x', bos='always')


@pytest.mark.parametrize('name', sorted(TOKENIZER_OF))
def test_role_markers_are_single_special_tokens(tokenizers, name):
    tokenizer = tokenizers[name]
    template = TEMPLATES[name]
    markers = {'<|im_start|>', '<|im_end|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
               '<|endoftext|>'}
    used = [m for m in markers if m in template.system + template.instruction + template.suffix]
    used += list(template.stop_words)
    assert used
    for marker in used:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        assert ids == [tokenizer.convert_tokens_to_ids(marker)], marker


@pytest.mark.parametrize('name', sorted(TOKENIZER_OF))
def test_render_prompt_ids_match_the_tokenizer_chat_template(tokenizers, name):
    """BOS (when the template takes it) + render_prompt gives the model's own chat-template ids."""
    from mmllava.data.encode import bos_ids

    tokenizer = tokenizers[name]
    template = TEMPLATES[name]
    messages = [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': 'What color is the shape?'}, {'role': 'assistant', 'content': 'red'},
                {'role': 'user', 'content': 'What shape is it?'}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rendered = render_prompt(template, [m['content'] for m in messages[1:]], system='Be brief.')
    ours = bos_ids(tokenizer, template) + tokenizer.encode(rendered, add_special_tokens=False)
    assert ours == tokenizer.encode(expected, add_special_tokens=False)
