"""Exports that other tools read, each tool in its own process: the ``huggingface`` LLaVA export
(LLaVA-InternLM2, LLaVA-Llama-3, LLaVA-Qwen2.5) and InternVL2 export load in transformers 4.52.4 and
in this venv's transformers 5.x with no missing or unused weight, their processor renders the
export's own chat template into the prompt ``mmllava chat`` builds, and the logits and greedy
tokens equal ``mmllava chat``'s. ``mmllava chat`` reads the same checkpoint through our own model
code (the ``xtuner`` export for LLaVA, the ``official`` export for InternVL), so writer and reader
share no loading code. The ``xtuner`` export's adapters load with plain PEFT.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from foreign_tools import TRANSFORMERS4, run_python, torchvision_path, transformers4  # noqa: F401 (fixtures)
from llava_checkpoints import cfg_options, make_checkpoint, sample_image

from mmllava.cli import main
from mmllava.constants import IMAGE_TOKEN_INDEX

REPO = Path(__file__).resolve().parents[1]
PROMPT = 'What colour is the circle?'
MAX_NEW_TOKENS = 12
# family -> (tiny config, the zoo's LLM)
LLAVA_FAMILIES = {
    'llava_internlm2': ('llava_tiny_internlm2_chat_qlora_clip_finetune', 'internlm2_chat'),
    'llava_llama3': ('llava_tiny_llama3_instruct_qlora_clip_finetune', 'llama3_instruct'),
    'llava_qwen2_5': ('llava_tiny_qwen2_5_instruct_clip_lora_finetune', 'qwen2_5_instruct'),
}
INTERNVL_CONFIG = 'internvl_tiny_internlm2_lora_finetune'


# fp32 logits of two implementations of one network from the same fp32 weights (LoRA merged in
# fp32) differ only by the order of reductions. Reordering a sum of K terms changes it by about
# sqrt(K) * eps relative (rounding errors add like a random walk): sqrt(128) * 1.19e-7 = 1.3e-6 for
# the widest reduction here (K <= 128). The LM head's weights are N(0, 1/hidden)
# (mmllava.tiny.zoo.random_tensor), so an error d in the unit-RMS final hidden state moves a logit by
# about d; a handful of such reductions in sequence stays below 1e-5. (Measured: 0 for LLaVA.)
LOGITS_ATOL = 1e-5


def activations_atol(reference: torch.Tensor) -> float:
    """The same bound for activations that are not normalised (a vision tower's residual stream):
    relative to the largest one."""
    return LOGITS_ATOL * max(1.0, reference.abs().max().item())


# Runs in transformers 4.52.4 or 5.x (argv: folder, image, prompt, max_new_tokens, output file, file of
# mmllava's pixel values).
# Loads the export as any user would, reports the loading info, renders the export's own chat
# template through the processor, and writes the prompt logits for the caller to compare.
FOREIGN_SCRIPT = r'''
import json, sys
import torch, transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, image, prompt, max_new_tokens, out, reference_pixels = sys.argv[1:7]
model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True,
                                                          torch_dtype=torch.float32)
model.eval()
processor = AutoProcessor.from_pretrained(folder)
messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': prompt}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
enc = processor(text=text, images=Image.open(image).convert('RGB'), return_tensors='pt', add_special_tokens=False)
with torch.no_grad():  # logits on mmllava's pixels: the model is compared, not the image resizing
    pixels = load_file(reference_pixels)['pixel_values']
    logits = model(**{**enc, 'pixel_values': pixels.to(enc['pixel_values'].dtype)}).logits[0]
    out_ids = model.generate(**enc, do_sample=False, max_new_tokens=int(max_new_tokens))
save_file({'logits': logits.contiguous(), 'pixel_values': enc['pixel_values'].contiguous()}, out)
print(json.dumps({'version': transformers.__version__, 'class': type(model).__name__,
                  'processor': type(processor).__name__,
                  'loading': {k: sorted(map(str, v)) for k, v in info.items()},
                  'input_ids': enc['input_ids'][0].tolist(),
                  'new_ids': out_ids[0, enc['input_ids'].shape[1]:].tolist()}))
'''


def mmllava_chat_reference(chat_model, image) -> dict:
    """What ``mmllava chat`` does for one greedy turn: its prompt ids (image positions as
    ``IMAGE_TOKEN_INDEX``), pixel values, new token ids, and the prompt's logits from its model."""
    from mmllava.chat.session import ChatSession, GenerationSettings

    seen = {}
    generate = chat_model.generate

    def recording_generate(input_ids, pixel_values=None, **kwargs):
        seen.update(input_ids=input_ids, pixel_values=pixel_values)
        seen['new_ids'] = generate(input_ids, pixel_values, **kwargs)
        return seen['new_ids']

    chat_model.generate = recording_generate
    ChatSession(chat_model, settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)).ask(PROMPT, image=image)
    with torch.no_grad():
        seen['logits'] = chat_model.model({'input_ids': seen['input_ids'], 'pixel_values': seen['pixel_values']},
                                          mode='tensor')[0]
    return seen


def read_foreign(folder: Path, image: Path, reference: dict, tmp_path: Path, pythonpath) -> tuple[dict, dict]:
    """Run :data:`FOREIGN_SCRIPT` on ``folder``; returns its JSON result and tensors."""
    from safetensors.torch import load_file, save_file

    save_file({'pixel_values': reference['pixel_values'].float().contiguous()}, str(tmp_path / 'pixels.safetensors'))
    out = tmp_path / 'out.safetensors'
    result = run_python(FOREIGN_SCRIPT, str(folder), str(image), PROMPT, str(MAX_NEW_TOKENS), str(out),
                        str(tmp_path / 'pixels.safetensors'), pythonpath=pythonpath)
    return result, load_file(str(out))


def assert_reads_like_mmllava_chat(result: dict, tensors: dict, reference: dict, image_token_id: int,
                                   version: str) -> None:
    """Loading info clean, the processor's prompt = mmllava chat's, same logits and greedy tokens."""
    assert result['version'] == version
    assert result['loading'] == {'missing_keys': [], 'unexpected_keys': [], 'mismatched_keys': [], 'error_msgs': []}
    expected_ids = [image_token_id if i == IMAGE_TOKEN_INDEX else i for i in reference['input_ids'][0].tolist()]
    assert result['input_ids'] == expected_ids
    # Both resize with PIL's bicubic filter and normalise in fp32, so pixels agree to fp32 rounding,
    # except that GotOcr2's tiles may round a few resized pixels to the neighbouring uint8 level
    # (one level is 1 / 255 / std after normalising; 0.224 is the smallest std, ImageNet's green):
    # at most 0.1% of them, by one level.
    diff = (tensors['pixel_values'] - reference['pixel_values'].float()).abs()
    assert diff.max() <= 1 / 255 / 0.224 + 1e-5 and (diff > 1e-5).float().mean() <= 1e-3, diff.max()
    logits, vocab = tensors['logits'], reference['logits'].shape[-1]
    if logits.shape[-1] != vocab:  # the export's vocabulary gained the image token as its last row
        assert logits.shape[-1] == image_token_id + 1 > vocab
    torch.testing.assert_close(logits[:, :vocab], reference['logits'], rtol=0, atol=LOGITS_ATOL)
    assert result['new_ids'] == reference['new_ids'] and len(result['new_ids']) > 0


# ------------------------------------------------------------------------------------------------ LLaVA


@pytest.fixture(scope='module', params=list(LLAVA_FAMILIES))
def llava_export(request, tiny_zoo, tmp_path_factory):
    """A LoRA checkpoint of one LLaVA family as ``xtuner`` and ``huggingface`` (fp32) exports, and
    ``mmllava chat``'s greedy turn on the ``xtuner`` one (our LLaVAModel)."""
    from mmllava.chat.loader import load_chat_model

    config, llm = LLAVA_FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    make_checkpoint(tiny_zoo, root / 'iter_5.pth', config, qlora=False, scale=0.05, llm=llm)
    for fmt in ('xtuner', 'huggingface'):
        assert main(['convert', 'pth_to_hf', config, str(root / 'iter_5.pth'), str(root / fmt), '--fp32',
                     '--save-format', fmt, '--cfg-options', *cfg_options(tiny_zoo, qlora=False, llm=llm)]) == 0
    sample_image().save(root / 'image.png')
    chat_model = load_chat_model(tiny_zoo[llm], llava=root / 'xtuner', visual_encoder=tiny_zoo['clip_vit'],
                                 torch_dtype='float32', device='cpu')
    reference = mmllava_chat_reference(chat_model, sample_image())
    return dict(root=root, family=request.param, llm=llm, chat_model=chat_model, reference=reference)


def test_huggingface_llava_export_files_read_by_both_versions(llava_export):
    folder = llava_export['root'] / 'huggingface'
    processor = json.loads((folder / 'processor_config.json').read_text())
    assert 'image_processor' not in processor  # nested: 4.52's AutoProcessor passes it twice
    assert json.loads((folder / 'preprocessor_config.json').read_text())['image_processor_type'] == 'CLIPImageProcessor'
    tokenizer = json.loads((folder / 'tokenizer_config.json').read_text())
    assert tokenizer['tokenizer_class'] != 'TokenizersBackend' and 'chat_template' in tokenizer
    assert not isinstance(tokenizer.get('extra_special_tokens'), list)
    config = json.loads((folder / 'config.json').read_text())
    assert config['torch_dtype'] == config['dtype'] == 'float32'
    assert config['text_config']['rope_theta'] == config['text_config']['rope_parameters']['rope_theta']
    with open(folder / 'model.safetensors', 'rb') as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), 'little')))
    prefixes = {k.split('.layers.')[0].rsplit('.', 1)[0] for k in header if k != '__metadata__'}
    assert {p.split('.')[0] for p in prefixes} == {'vision_tower', 'multi_modal_projector', 'language_model'}
    assert any(k.startswith('vision_tower.vision_model.encoder.layers.') for k in header)
    assert any(k.startswith('language_model.model.layers.') for k in header)
    assert set(k for k in header if k.startswith('multi_modal_projector.')) == {
        f'multi_modal_projector.linear_{i}.{w}' for i in (1, 2) for w in ('weight', 'bias')}
    assert ('language_model.lm_head.weight' in header) == (not config['tie_word_embeddings'])


def test_huggingface_llava_export_reads_in_transformers_4_52(llava_export, transformers4, tmp_path):
    result, tensors = read_foreign(llava_export['root'] / 'huggingface', llava_export['root'] / 'image.png',
                                   llava_export['reference'], tmp_path, transformers4)
    assert (result['class'], result['processor']) == ('LlavaForConditionalGeneration', 'LlavaProcessor')
    assert_reads_like_mmllava_chat(result, tensors, llava_export['reference'], _image_token_id(llava_export),
                                   '4.52.4')


def test_huggingface_llava_export_reads_in_transformers_5(llava_export, tmp_path):
    import transformers

    result, tensors = read_foreign(llava_export['root'] / 'huggingface', llava_export['root'] / 'image.png',
                                   llava_export['reference'], tmp_path, None)
    assert (result['class'], result['processor']) == ('LlavaForConditionalGeneration', 'LlavaProcessor')
    assert_reads_like_mmllava_chat(result, tensors, llava_export['reference'], _image_token_id(llava_export),
                                   transformers.__version__)


def _image_token_id(export) -> int:
    return json.loads((export['root'] / 'huggingface' / 'config.json').read_text())['image_token_index']


# --------------------------------------------------------------------------------------------- InternVL2


def make_internvl_exports(official_folder: Path, root: Path) -> Path:
    """A LoRA checkpoint (non-zero adapters, so merges are exercised) of the tiny InternVL2 config
    on ``official_folder``, exported (fp32) as ``root/huggingface`` and ``root/official``."""
    from mmllava.config import build, load_config, parse_cfg_options

    options = [f'path={official_folder}', f'data_root={REPO}/data/synthetic/']
    model = build(load_config(INTERNVL_CONFIG, parse_cfg_options(options)).model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p += 0.05 * torch.randn(p.shape, generator=gen)
    root.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'iter_5.pth')
    for fmt in ('huggingface', 'official'):
        assert main(['convert', 'pth_to_hf', INTERNVL_CONFIG, str(root / 'iter_5.pth'), str(root / fmt), '--fp32',
                     '--save-format', fmt, '--cfg-options', *options]) == 0
    return root


@pytest.fixture(scope='module')
def internvl_export(tiny_zoo, tmp_path_factory):
    """The tiny InternVL2's ``huggingface`` and ``official`` exports, and ``mmllava chat``'s greedy
    turn on the ``official`` one (our InternVLModel)."""
    from mmllava.chat.loader import load_chat_model

    root = make_internvl_exports(tiny_zoo['internvl2_official'], tmp_path_factory.mktemp('internvl2'))
    sample_image().save(root / 'image.png')
    chat_model = load_chat_model(root / 'official', torch_dtype='float32', device='cpu')
    return dict(root=root, chat_model=chat_model, reference=mmllava_chat_reference(chat_model, sample_image()))


def test_internvl_chat_template_writes_the_processors_image_token(internvl_export):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(internvl_export['root'] / 'huggingface')
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': PROMPT}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert '<IMG_CONTEXT>\n' + PROMPT in text and '<image>' not in text
    # The official folder keeps <image>: InternVL's own chat() and vLLM's InternVL replace that.
    official = json.loads((internvl_export['root'] / 'official' / 'tokenizer_config.json').read_text())
    assert '<image>' in official['chat_template'] and '<IMG_CONTEXT>' not in official['chat_template']


@pytest.mark.parametrize('version', ['4.52.4', '5'])
def test_huggingface_internvl_export_reads_in_transformers(internvl_export, version, transformers4,
                                                           torchvision_path, tmp_path):
    """transformers' InternVLProcessor needs torchvision (its video processor) in 4.52 and 5.x."""
    import transformers

    folder = internvl_export['root'] / 'huggingface'
    paths = [transformers4, torchvision_path] if version == '4.52.4' else [torchvision_path]
    result, tensors = read_foreign(folder, internvl_export['root'] / 'image.png', internvl_export['reference'],
                                   tmp_path, paths)
    assert (result['class'], result['processor']) == ('InternVLForConditionalGeneration', 'InternVLProcessor')
    image_token_id = json.loads((folder / 'config.json').read_text())['image_token_id']
    assert_reads_like_mmllava_chat(result, tensors, internvl_export['reference'], image_token_id,
                                   version if version == '4.52.4' else transformers.__version__)


# ----------------------------------------------------------------------------------- xtuner adapters, PEFT

# Runs in a fresh process of this venv with nothing of mmllava imported (argv: LLM folder, its
# adapter, vision folder or '', its adapter or '', inputs file, output file): plain transformers +
# PEFT, as a user of the xtuner export would load it.
PEFT_SCRIPT = r'''
import json, sys, warnings
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, CLIPVisionModel

llm_dir, llm_adapter, vision_dir, vision_adapter, inputs, out = sys.argv[1:7]
inputs, outputs = load_file(inputs), {}
with warnings.catch_warnings(record=True) as caught, torch.no_grad():
    warnings.simplefilter('always')
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, torch_dtype=torch.float32).eval()
    outputs['llm_base'] = llm(input_ids=inputs['input_ids']).logits[0]
    llm = PeftModel.from_pretrained(llm, llm_adapter).eval()
    outputs['llm'] = llm(input_ids=inputs['input_ids']).logits[0]
    if vision_dir:
        vision = CLIPVisionModel.from_pretrained(vision_dir, torch_dtype=torch.float32).eval()
        vision = PeftModel.from_pretrained(vision, vision_adapter).eval()
        hidden = vision(pixel_values=inputs['pixel_values'], output_hidden_states=True).hidden_states
        outputs['vision'] = torch.stack(hidden)
save_file({k: v.contiguous() for k, v in outputs.items()}, out)
print(json.dumps({'warnings': [str(w.message) for w in caught if 'adapter' in str(w.message).lower()]}))
'''


@pytest.mark.parametrize('llava_export', ['llava_llama3', 'llava_qwen2_5'], indirect=True)
def test_xtuner_export_adapters_load_with_plain_peft(llava_export, tiny_zoo, tmp_path):
    """The LLM adapter on the base LLM folder and the vision adapter on the CLIP folder, loaded by
    PEFT alone, compute what ``mmllava chat``'s model computes. (LLaVA-InternLM2's adapters name the
    Llama modules mmllava converts InternLM2 into, so plain PEFT on InternLM2's remote code is not
    a consumer of them.)"""
    from safetensors.torch import load_file, save_file

    export, chat_model = llava_export['root'] / 'xtuner', llava_export['chat_model']
    has_vision_adapter = (export / 'visual_encoder_adapter').is_dir()
    assert (export / 'llm_adapter').is_dir()
    input_ids = chat_model.tokenizer(PROMPT, return_tensors='pt')['input_ids']
    pixel_values = llava_export['reference']['pixel_values'].float()
    save_file({'input_ids': input_ids.contiguous(), 'pixel_values': pixel_values.contiguous()},
              str(tmp_path / 'inputs.safetensors'))
    result = run_python(PEFT_SCRIPT, str(tiny_zoo[llava_export['llm']]), str(export / 'llm_adapter'),
                        str(tiny_zoo['clip_vit']) if has_vision_adapter else '',
                        str(export / 'visual_encoder_adapter') if has_vision_adapter else '',
                        str(tmp_path / 'inputs.safetensors'), str(tmp_path / 'out.safetensors'))
    assert result['warnings'] == []  # PEFT warns about adapter keys it could not place
    foreign = load_file(str(tmp_path / 'out.safetensors'))
    with torch.no_grad():
        logits = chat_model.model.llm(input_ids=input_ids).logits[0]
        assert (foreign['llm_base'] - logits).abs().max() > 100 * LOGITS_ATOL  # the adapter matters
        torch.testing.assert_close(foreign['llm'], logits, rtol=0, atol=LOGITS_ATOL)
        if has_vision_adapter:
            hidden = torch.stack(chat_model.model.visual_encoder(pixel_values, output_hidden_states=True).hidden_states)
            torch.testing.assert_close(foreign['vision'], hidden, rtol=0, atol=activations_atol(hidden))
    assert has_vision_adapter == (llava_export['family'] == 'llava_llama3')  # the Llama-3 config trains CLIP LoRA


# ------------------------------------------------------------------------- official InternVL, remote code

# Runs in transformers 4.52.4 or 5.x (argv: official folder, prompt, max_new_tokens, file of mmllava's
# pixel values, output file): InternVL's documented use, AutoModel/AutoTokenizer with trust_remote_code.
REMOTE_CODE_SCRIPT = r'''
import json, sys
import torch, transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, GenerationConfig

folder, prompt, max_new_tokens, pixels, out = sys.argv[1:6]
model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32,
                                        output_loading_info=True)
model.eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, use_fast=False)
model.img_context_token_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
pixels = load_file(pixels)['pixel_values']
query = tokenizer.apply_chat_template([{'role': 'user', 'content': '<image>\n' + prompt}], tokenize=False,
                                      add_generation_prompt=True)
query = query.replace('<image>', '<img>' + '<IMG_CONTEXT>' * model.num_image_token * len(pixels) + '</img>', 1)
enc = tokenizer(query, return_tensors='pt', add_special_tokens=False)
settings = dict(max_new_tokens=int(max_new_tokens), do_sample=False,
                eos_token_id=GenerationConfig.from_pretrained(folder).eos_token_id)
with torch.no_grad():
    logits = model(pixel_values=pixels, input_ids=enc['input_ids']).logits[0]
    new_ids = model.generate(pixels, enc['input_ids'], enc['attention_mask'], **settings)[0].tolist()
    answer = model.chat(tokenizer, pixels, prompt, settings)
save_file({'logits': logits.contiguous()}, out)
print(json.dumps({'version': transformers.__version__, 'class': type(model).__name__,
                  'loading': {k: sorted(map(str, v)) for k, v in info.items()},
                  'input_ids': enc['input_ids'][0].tolist(), 'new_ids': new_ids, 'answer': answer}))
'''


def test_official_internvl_export_contains_every_file_its_auto_map_names(internvl_export):
    from mmllava.convert.internvl_export import auto_map_files

    folder = internvl_export['root'] / 'official'
    configs = [json.loads((folder / name).read_text()) for name in ('config.json', 'tokenizer_config.json')]
    named = auto_map_files(*configs)
    assert {'configuration_internvl_chat.py', 'modeling_internvl_chat.py', 'configuration_internlm2.py',
            'modeling_internlm2.py', 'tokenization_internlm2.py', 'tokenization_internlm2_fast.py'} <= set(named)
    assert [name for name in named if not (folder / name).is_file()] == []


def test_official_internvl_export_refuses_a_source_without_its_remote_code(internvl_export, tiny_zoo, tmp_path,
                                                                          capsys):
    import shutil

    source = tmp_path / 'internvl2_no_code'  # as the tiny zoo was written before it had its own files
    shutil.copytree(tiny_zoo['internvl2_official'], source, ignore=shutil.ignore_patterns('*.py'))
    capsys.readouterr()
    code = main(['convert', 'pth_to_hf', INTERNVL_CONFIG, str(internvl_export['root'] / 'iter_5.pth'),
                 str(tmp_path / 'out'), '--cfg-options', f'path={source}', f'data_root={REPO}/data/synthetic/'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not (tmp_path / 'out').exists()
    assert err[-1] == (
        f'mmllava convert: error: {source}: its auto_map names remote code it does not contain '
        '(configuration_internlm2.py, configuration_internvl_chat.py, modeling_internlm2.py, '
        'modeling_internvl_chat.py, tokenization_internlm2.py, tokenization_internlm2_fast.py), so an official '
        'export would point at missing files: add them to the folder (they come with the model) or use '
        '--save-format huggingface')


@pytest.mark.parametrize('version', ['4.52.4', '5'])
def test_official_internvl_export_runs_with_trust_remote_code(internvl_export, version, transformers4, tmp_path):
    """The remote code the export ships (our own for the tiny zoo) loads every weight and computes
    mmllava chat's logits and greedy tokens, through the export's own chat template."""
    import transformers
    from safetensors.torch import load_file, save_file

    reference = internvl_export['reference']
    save_file({'pixel_values': reference['pixel_values'].float().contiguous()}, str(tmp_path / 'pixels.safetensors'))
    result = run_python(REMOTE_CODE_SCRIPT, str(internvl_export['root'] / 'official'), PROMPT, str(MAX_NEW_TOKENS),
                        str(tmp_path / 'pixels.safetensors'), str(tmp_path / 'out.safetensors'),
                        pythonpath=transformers4 if version == '4.52.4' else None)
    assert result['version'] == (version if version == '4.52.4' else transformers.__version__)
    assert result['class'] == 'InternVLChatModel'
    assert result['loading'] == {'missing_keys': [], 'unexpected_keys': [], 'mismatched_keys': [], 'error_msgs': []}
    tokenizer = internvl_export['chat_model'].tokenizer
    context_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
    assert result['input_ids'] == [context_id if i == IMAGE_TOKEN_INDEX else i
                                   for i in reference['input_ids'][0].tolist()]
    logits = load_file(str(tmp_path / 'out.safetensors'))['logits']
    torch.testing.assert_close(logits, reference['logits'], rtol=0, atol=LOGITS_ATOL)
    assert result['new_ids'] == reference['new_ids'] and len(result['new_ids']) > 0
    assert result['answer'] == tokenizer.decode(reference['new_ids'], skip_special_tokens=True).strip()
