#!/usr/bin/env bash
# The main job end to end on the embedded default, on a CPU:
#   tiny models (built locally) + shipped synthetic data
#   -> projector pretrain -> QLoRA fine-tune -> convert -> chat about a held-out image.
# Run from the repository root:  bash tools/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PRETRAIN=llava_tiny_internlm2_chat_clip_pretrain
FINETUNE=llava_tiny_internlm2_chat_qlora_clip_finetune
IMAGE=data/synthetic/images/eval_0000.png

echo "== 1/5 tiny models (real on-disk formats) -> tiny_models/"
python tools/make_tiny_zoo.py tiny_models

echo "== 2/5 pretrain the projector (LLM and vision tower frozen)"
mmllava train "$PRETRAIN"

echo "== 3/5 QLoRA fine-tune from the pretrained projector"
mmllava train "$FINETUNE" --deepspeed deepspeed_zero2

echo "== 4/5 convert: XTuner-style adapters and a merged transformers LLaVA folder"
mmllava convert pth_to_hf "$FINETUNE" "work_dirs/$FINETUNE" "work_dirs/$FINETUNE/xtuner_export"
mmllava convert pth_to_hf "$FINETUNE" "work_dirs/$FINETUNE" "work_dirs/$FINETUNE/hf_export" --save-format huggingface

echo "== 5/5 chat about a held-out image (the answer is in data/synthetic/eval.json: eval_0000)"
mmllava chat tiny_models/internlm2_chat --visual-encoder tiny_models/clip_vit \
    --llava "work_dirs/$FINETUNE/xtuner_export" --prompt-template internlm2_chat \
    --image "$IMAGE" --prompt "What color is the shape?" --temperature 0
mmllava chat "work_dirs/$FINETUNE/hf_export" --image "$IMAGE" --prompt "What color is the shape?" --temperature 0
