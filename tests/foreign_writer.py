"""Written by other tools, each in its own process: random-init tiny CLIP (CLIPModel, CLIPVisionModel,
CLIPVisionModelWithProjection), Llama (untied head), Qwen2 (tied head), LLaVA and native InternVL
folders, saved by whichever transformers this interpreter imports (4.52.4 or 5.x), and the
writer's own outputs on fixed inputs in ``expected.safetensors``; JSON facts on the last line.

Usage: python foreign_writer.py OUT_DIR TINY_ZOO (tokenizers come from the tiny zoo)."""
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          CLIPVisionModelWithProjection, InternVLConfig, InternVLForConditionalGeneration, LlamaConfig,
                          LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM)

out, zoo = Path(sys.argv[1]), Path(sys.argv[2])
version = int(transformers.__version__.split('.')[0])
gen = torch.Generator().manual_seed(0)
expected, info = {}, {'version': transformers.__version__}


def randomise(model):
    # transformers' own init (std 0.02, unit norms) makes near-constant outputs; visible weights make
    # a wrong or missing weight change the outputs by far more than the tolerance.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def rope(theta):  # transformers 5 reads rope_parameters, 4.x rope_theta
    return {'rope_parameters': {'rope_type': 'default', 'rope_theta': theta}} if version >= 5 else {'rope_theta': theta}


vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=64,
              patch_size=8, projection_dim=32)
pixels = torch.randn(1, 3, 64, 64, generator=gen)
expected['pixels'] = pixels
processor = CLIPImageProcessor.from_pretrained(zoo / 'clip_vit')
clips = {
    'clip_full': randomise(CLIPModel(CLIPConfig(vision_config=vision, projection_dim=32, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)))),
    'clip_vision': randomise(CLIPVisionModel(CLIPVisionConfig(**vision))),
    'clip_projection': randomise(CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))),
}
for name, model in clips.items():
    folder = out / name
    if name == 'clip_vision' and version < 5:  # transformers 5 writes safetensors only
        model.save_pretrained(folder, safe_serialization=False, max_shard_size='200KB')
    else:
        model.save_pretrained(folder, max_shard_size='200KB' if name == 'clip_projection' else '1GB')
    processor.save_pretrained(folder)
    tower = getattr(model, 'vision_model', model)  # transformers 5's CLIPVisionModel is the tower itself
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states
    expected[f'{name}.hidden_states'] = torch.stack(hidden)
    info[name] = sorted(p.name for p in folder.iterdir())

text = 'Hello world: <|im_start|>shapes, colours and 123 numbers'
ids = None
llms = {}
for name, zoo_name, cls, config_cls, tied, theta in (
        ('llama', 'llama3_instruct', LlamaForCausalLM, LlamaConfig, False, 500000.0),
        ('qwen2', 'qwen2_5_instruct', Qwen2ForCausalLM, Qwen2Config, True, 1000000.0)):
    tokenizer = AutoTokenizer.from_pretrained(zoo / zoo_name)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **rope(theta))
    model = randomise(cls(config))
    if tied:
        model.tie_weights()
    folder = out / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ids = torch.randint(0, len(tokenizer), (2, 12), generator=gen)
    with torch.no_grad():
        expected[f'{name}.logits'] = model(input_ids=ids).logits
    expected[f'{name}.ids'] = ids
    info[name] = {'text_ids': tokenizer(text)['input_ids'],
                  'config': json.loads((folder / 'config.json').read_text()),
                  'tokenizer_class': json.loads((folder / 'tokenizer_config.json').read_text()).get('tokenizer_class')}
    llms[name] = model
info['text'] = text
# The class-specific tokenizer files (4.x writes tokenizer_class LlamaTokenizerFast, 5.x LlamaTokenizer...).
llama_tokenizer = transformers.LlamaTokenizerFast.from_pretrained(zoo / 'llama3_instruct')
llama_tokenizer.save_pretrained(out / 'llama_tokenizer')
info['llama_tokenizer'] = {
    'text_ids': llama_tokenizer(text)['input_ids'],
    'tokenizer_class': json.loads((out / 'llama_tokenizer' / 'tokenizer_config.json').read_text()).get('tokenizer_class')}

# LLaVA: the tower of clip_vision's shape, the llama LLM above, a random projector.
llama = llms['llama']
image_token = llama.config.vocab_size - 1
llava = LlavaForConditionalGeneration(LlavaConfig(
    vision_config=CLIPVisionConfig(**vision), text_config=llama.config, image_token_index=image_token,
    vision_feature_layer=-2, vision_feature_select_strategy='default', image_seq_length=64))
randomise(llava)
llava.model.language_model.load_state_dict(llama.model.state_dict())
llava.lm_head.load_state_dict(llama.lm_head.state_dict())
llava.save_pretrained(out / 'llava')
llava_ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, 64), image_token), torch.tensor([[7, 8, 9]])], dim=1)
with torch.no_grad():
    expected['llava.logits'] = llava(input_ids=llava_ids, pixel_values=pixels).logits
    expected['llava.hidden_states'] = torch.stack(
        llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states)
expected['llava.ids'] = llava_ids
info['llava'] = {'image_token': image_token}

# InternVL (transformers-native): InternViT of 56 px tiles (4 tokens a tile) + Qwen2.
qwen = llms['qwen2']
internvl_token = qwen.config.vocab_size - 1
internvl = InternVLForConditionalGeneration(InternVLConfig(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=[56, 56], patch_size=[14, 14], attention_bias=True),
    text_config=qwen.config.to_dict(), image_token_id=internvl_token, image_seq_length=4, downsample_ratio=0.5))
randomise(internvl)
internvl.tie_weights()
internvl.save_pretrained(out / 'internvl')
tile = torch.randn(1, 3, 56, 56, generator=gen)
internvl_ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, 4), internvl_token), torch.tensor([[7, 8]])], dim=1)
with torch.no_grad():
    expected['internvl.logits'] = internvl(input_ids=internvl_ids, pixel_values=tile).logits
expected['internvl.ids'] = internvl_ids
expected['internvl.pixels'] = tile
info['internvl'] = {'image_token': internvl_token,
                    'config': json.loads((out / 'internvl' / 'config.json').read_text())}

save_file({k: v.contiguous() for k, v in expected.items()}, str(out / 'expected.safetensors'))
print(json.dumps(info))
