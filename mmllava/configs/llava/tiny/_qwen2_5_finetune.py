# Re-assignments the tiny Qwen2.5 fine-tunes (train types use_lora, none, freeze_vision) share, after
# ../../_tiny_cpu.py and _finetune.py: the tiny Qwen2.5-format LLM, the projector of the tiny Qwen2.5
# pretrain, three epochs.
llm_name_or_path = '{{tiny_models}}/qwen2_5_instruct'
pretrained_pth = './work_dirs/llava_tiny_qwen2_5_instruct_clip_pretrain'  # a work dir means its last checkpoint
max_epochs = 3
