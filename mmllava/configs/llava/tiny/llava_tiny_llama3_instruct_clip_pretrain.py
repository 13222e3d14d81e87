# Tiny CPU counterpart of the pretrain of the LLaVA-Llama-3-8B QLoRA tutorial: the projector between the
# tiny CLIP and the tiny Llama-3-format LLM (both frozen) trained on the captions of the shipped
# synthetic shapes data.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'llava_llama3_8b_instruct_clip_vit_large_p14_336_e1_gpu8_pretrain'
shared_overrides = ['../../_tiny_cpu.py', '_pretrain.py']

llm_name_or_path = '{{tiny_models}}/llama3_instruct'
