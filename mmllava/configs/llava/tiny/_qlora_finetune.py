# Re-assignments the tiny QLoRA fine-tunes (InternLM2, Llama-3) share, after ../../_tiny_cpu.py and
# _finetune.py: six epochs at a higher lr, small LoRA ranks for the tiny models.
max_epochs = 6
lr = 5e-3
llm_lora_r = 16
llm_lora_alpha = 32
visual_encoder_lora_r = 8
