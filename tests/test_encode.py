"""encode_conversation: exact label masks, image positions, truncation and validation."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.data.encode import bos_ids, encode_conversation, tokenize_with_images
from mmllava.errors import MMLLaVAError
from mmllava.templates import get_template, render_prompt

N_IMAGE = 16
CONV = [
    {'from': 'human', 'value': '<image>\nWhat color is the shape?'}, {'from': 'gpt', 'value': 'red'},
    {'from': 'human', 'value': 'How many shapes are there?'}, {'from': 'gpt', 'value': 'two'},
]
# template -> (tiny model whose tokenizer it goes with, the end token of an answer)
CASES = {'internlm2_chat': ('internlm2_chat', '<|im_end|>'), 'llama3_chat': ('llama3_instruct', '<|eot_id|>'),
         'qwen_chat': ('qwen2_5_instruct', '<|im_end|>'), 'plain': ('internlm2_chat', '\n')}


@pytest.fixture(scope='module')
def tokenizers(tiny_zoo):
    from mmllava.pretrained import load_tokenizer

    return {model: load_tokenizer(tiny_zoo[model]) for model in {model for model, _ in CASES.values()}}


def _runs(labels):
    """Maximal runs of positions that carry a label: [(start, end), ...]."""
    runs, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _assert_trained_exactly(encoded, tokenizer, answers):
    """Labels equal the ids on exactly the answers' positions (+ end token) and nothing else."""
    ids, labels = encoded['input_ids'], encoded['labels']
    assert len(ids) == len(labels)
    runs = _runs(labels)
    assert [tokenizer.decode(ids[a:b]) for a, b in runs] == answers
    trained = {i for a, b in runs for i in range(a, b)}
    for i, (token, label) in enumerate(zip(ids, labels)):
        assert label == (token if i in trained else IGNORE_INDEX)


@pytest.mark.parametrize('name', sorted(CASES))
def test_two_turn_label_mask(tokenizers, name):
    model, end = CASES[name]
    tokenizer = tokenizers[model]
    template = get_template(name)
    conv = CONV[:2] if name == 'plain' else CONV
    encoded = encode_conversation(conv, tokenizer, name, N_IMAGE, max_length=512, system='Be brief.')
    ids = encoded['input_ids']
    answers = [t['value'] + end for t in conv[1::2]]
    _assert_trained_exactly(encoded, tokenizer, answers)
    start = ids.index(IMAGE_TOKEN_INDEX)
    assert ids.count(IMAGE_TOKEN_INDEX) == N_IMAGE and ids[start:start + N_IMAGE] == [IMAGE_TOKEN_INDEX] * N_IMAGE
    assert ids[:1] == bos_ids(tokenizer, template) or not bos_ids(tokenizer, template)
    if name == 'qwen_chat':
        assert ids[0] == tokenizer.convert_tokens_to_ids('<|im_start|>')  # Qwen has no BOS
    # The whole sequence is the rendered conversation, with the image placeholder expanded.
    values = [t['value'] for t in conv]
    text = render_prompt(template, values[:-1], system='Be brief.') + template.answer(values[-1]) + template.sep
    expected = bos_ids(tokenizer, template) + tokenize_with_images(text, tokenizer, N_IMAGE)
    assert [tokenizer.decode([i]) if i >= 0 else i for i in ids] == \
        [tokenizer.decode([i]) if i >= 0 else i for i in expected]
    if name == 'plain':
        assert ids[:1 + N_IMAGE] == bos_ids(tokenizer, template) + [IMAGE_TOKEN_INDEX] * N_IMAGE


def test_text_never_merges_across_the_image(tokenizers):
    tokenizer = tokenizers['qwen2_5_instruct']
    ids = tokenize_with_images('red<image>circle', tokenizer, 3)
    assert ids == (tokenizer.encode('red', add_special_tokens=False) + [IMAGE_TOKEN_INDEX] * 3
                   + tokenizer.encode('circle', add_special_tokens=False))


def test_truncation_drops_whole_turns(tokenizers):
    tokenizer = tokenizers['internlm2_chat']
    full = encode_conversation(CONV, tokenizer, 'internlm2_chat', N_IMAGE, max_length=512)
    first = encode_conversation(CONV[:2], tokenizer, 'internlm2_chat', N_IMAGE, max_length=512)
    for max_length in (len(first['input_ids']), len(full['input_ids']) - 2):
        cut = encode_conversation(CONV, tokenizer, 'internlm2_chat', N_IMAGE, max_length=max_length)
        assert cut == first
    # Only the untrained separator after the last turn may be cut.
    cut = encode_conversation(CONV[:2], tokenizer, 'internlm2_chat', N_IMAGE, len(first['input_ids']) - 1)
    assert cut['input_ids'] == first['input_ids'][:-1] and cut['labels'][-1] != IGNORE_INDEX


def test_truncation_never_splits_an_image(tokenizers):
    tokenizer = tokenizers['internlm2_chat']
    late_image = [CONV[2], CONV[3], CONV[0], CONV[1]]
    length = len(encode_conversation(late_image, tokenizer, 'internlm2_chat', N_IMAGE, 512)['input_ids'])
    with pytest.raises(MMLLaVAError, match=f'truncation to max_length={length - 5} would drop human/gpt pair 2 '
                                           'which holds the <image>'):
        encode_conversation(late_image, tokenizer, 'internlm2_chat', N_IMAGE, max_length=length - 5)


def test_zero_trained_tokens_raises(tokenizers):
    tokenizer = tokenizers['llama3_instruct']
    with pytest.raises(MMLLaVAError, match=r'no trained tokens after truncation to max_length=20: the first turn '
                                           r'alone needs \d+ tokens'):
        encode_conversation(CONV, tokenizer, 'llama3_chat', N_IMAGE, max_length=20)


def test_system_precedence(tokenizers):
    tokenizer = tokenizers['qwen2_5_instruct']

    def system_of(conv, system=None):
        ids = encode_conversation(conv, tokenizer, 'qwen_chat', 0, 512, system=system)['input_ids']
        return tokenizer.decode(ids).split('<|im_start|>user')[0]

    text_only = [{'from': 'human', 'value': 'What shape is it?'}, {'from': 'gpt', 'value': 'circle'}]
    own = [{'from': 'system', 'value': 'Answer with one word.'}] + text_only
    assert system_of(text_only) == ''
    assert system_of(text_only, 'Be brief.') == '<|im_start|>system\nBe brief.<|im_end|>\n'
    assert system_of(own, 'Be brief.') == '<|im_start|>system\nAnswer with one word.<|im_end|>\n'


@pytest.mark.parametrize('conv, reason', [
    ([], 'conversations must be a non-empty list'),
    ([{'from': 'gpt', 'value': 'red'}], 'turn 0: expected role "human", got \'gpt\''),
    ([{'from': 'human', 'value': 'q'}, {'from': 'human', 'value': 'q'}], 'turn 1: expected role "gpt"'),
    ([{'from': 'human', 'value': 'q'}], 'turn 0: the conversation ends with a human turn'),
    ([{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': ' \n'}], 'turn 1: empty gpt answer'),
    ([{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': 3}], 'turn 1: value must be a string, got int'),
    ([{'from': 'human', 'value': 'q'}, {'value': 'a'}], 'turn 1: expected an object with "from" and "value"'),
    ([{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': 'a <image>'}], 'turn 1: <image> placeholder'),
    ([{'from': 'system', 'value': 's'}], 'conversation has no human/gpt turn'),
])
def test_invalid_conversations(tokenizers, conv, reason):
    with pytest.raises(MMLLaVAError, match=reason.replace('(', r'\(').replace(')', r'\)')):
        encode_conversation(conv, tokenizers['qwen2_5_instruct'], 'qwen_chat', N_IMAGE, 512)


WORDS = ['red', 'circle', 'two', 'left', 'What color is the shape?', 'Hi there.', '<image>', '\n', ' ', '']
text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(' '.join)
# Answers are rarely blank or hold a placeholder (both invalid).
answer = st.lists(st.sampled_from(WORDS[:6] * 4 + WORDS[6:]), min_size=1, max_size=3).map(' '.join)


@st.composite
def conversations(draw):
    """Mostly well-formed conversations, a quarter of them with one turn broken."""
    turns = [{'from': 'system', 'value': draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        turns += [{'from': 'human', 'value': draw(text)}, {'from': 'gpt', 'value': draw(answer)}]
    if turns and draw(st.integers(0, 3)) == 0:
        broken = draw(st.sampled_from([{'from': 'bot'}, {'from': 'gpt'}, {'from': 'human'}, {'value': 7}]))
        i = draw(st.integers(0, len(turns) - 1))
        turns[i] = {**turns[i], **broken}
    return turns


@settings(max_examples=150, deadline=None)
@given(conv=conversations(), name=st.sampled_from(['internlm2_chat', 'qwen_chat']),
       max_length=st.integers(8, 120))
def test_random_conversations_train_exactly_the_answers_or_raise(tokenizers, conv, name, max_length):
    tokenizer = tokenizers[CASES[name][0]]
    try:
        encoded = encode_conversation(conv, tokenizer, name, 4, max_length)
    except MMLLaVAError:
        return
    assert 0 < len(encoded['input_ids']) <= max_length
    runs = _runs(encoded['labels'])
    answers = [t['value'] for t in conv if t['from'] == 'gpt']
    assert 1 <= len(runs) <= len(answers)
    for (a, b), answer in zip(runs, answers):
        assert encoded['input_ids'][a:b] == tokenizer.encode(answer + '<|im_end|>', add_special_tokens=False)
        assert encoded['labels'][a:b] == encoded['input_ids'][a:b]
    # An image is either kept whole or the conversation had none in its kept turns.
    assert encoded['input_ids'].count(IMAGE_TOKEN_INDEX) % 4 == 0
