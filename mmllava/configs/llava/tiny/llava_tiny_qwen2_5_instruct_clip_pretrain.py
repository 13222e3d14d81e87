# Tiny CPU counterpart of the pretrain of the Qwen2.5-3B LLaVA recipe: the projector between the tiny
# CLIP and the tiny Qwen2.5-format LLM (both frozen) trained on the captions of the shipped synthetic
# shapes data.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'llava_qwen2_5_3b_instruct_clip_vit_large_p14_336_e1_gpu8_pretrain'
shared_overrides = ['../../_tiny_cpu.py', '_pretrain.py']

llm_name_or_path = '{{tiny_models}}/qwen2_5_instruct'
