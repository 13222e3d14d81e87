#!/usr/bin/env bash
# The main job end to end on the embedded default, on a CPU:
#   tiny models + synthetic shapes data (built once into mmllava's cache folder)
#   -> projector pretrain -> QLoRA fine-tune -> convert -> chat about a held-out image.
#   bash tools/quickstart.sh       (from anywhere; sets up .venv first when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup_env.sh
mmllava_setup ''

PRETRAIN=llava_tiny_internlm2_chat_clip_pretrain
FINETUNE=llava_tiny_internlm2_chat_qlora_clip_finetune
IMAGE=data/synthetic/images/eval_0000.png

echo "== 1/5 the embedded default: tiny models (real on-disk formats) and synthetic data"
EMBEDDED=$(python -m mmllava.tiny.cache synthetic internlm2_chat clip_vit)
echo "$EMBEDDED"
LLM=$(awk '$1 == "internlm2_chat" {print $2}' <<< "$EMBEDDED")
VISUAL_ENCODER=$(awk '$1 == "clip_vit" {print $2}' <<< "$EMBEDDED")

echo "== 2/5 pretrain the projector (LLM and vision tower frozen)"
mmllava train "$PRETRAIN"

echo "== 3/5 QLoRA fine-tune from the pretrained projector"
mmllava train "$FINETUNE" --deepspeed deepspeed_zero2

echo "== 4/5 convert: XTuner-style adapters and a merged transformers LLaVA folder"
mmllava convert pth_to_hf "$FINETUNE" "work_dirs/$FINETUNE" "work_dirs/$FINETUNE/xtuner_export"
mmllava convert pth_to_hf "$FINETUNE" "work_dirs/$FINETUNE" "work_dirs/$FINETUNE/hf_export" --save-format huggingface

echo "== 5/5 chat about a held-out image (the answer is in data/synthetic/eval.json: eval_0000)"
mmllava chat "$LLM" --visual-encoder "$VISUAL_ENCODER" \
    --llava "work_dirs/$FINETUNE/xtuner_export" --prompt-template internlm2_chat \
    --image "$IMAGE" --prompt "What color is the shape?" --temperature 0
mmllava chat "work_dirs/$FINETUNE/hf_export" --image "$IMAGE" --prompt "What color is the shape?" --temperature 0
