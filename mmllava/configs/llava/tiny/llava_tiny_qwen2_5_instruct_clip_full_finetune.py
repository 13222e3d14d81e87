# Tiny CPU counterpart of the Qwen2.5-3B LLaVA recipe's fine-tune, train type none: everything trained:
# the tiny Qwen2.5-format LLM + tiny CLIP on the shipped synthetic shapes data, starting from the
# projector of llava_tiny_qwen2_5_instruct_clip_pretrain.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'llava_qwen2_5_3b_instruct_clip_vit_large_p14_336_full_finetune'
shared_overrides = ['../../_tiny_cpu.py', '_finetune.py', '_qwen2_5_finetune.py']

lr = 2e-4
