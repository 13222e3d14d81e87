#!/usr/bin/env bash
# The main job end to end on the embedded default, on a CPU:
#   tiny models + synthetic shapes data (built once into mmllava's cache folder)
#   -> projector pretrain -> QLoRA fine-tune -> convert -> chat about a held-out image, checked
#   against its gold answer, and the export's accuracy on the held-out split (exit 1 when wrong).
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

echo "== 5/5 check: the chats' answer to a held-out image, and accuracy on the held-out split"
XTUNER_ANSWER=$(mmllava chat "$LLM" --visual-encoder "$VISUAL_ENCODER" \
    --llava "work_dirs/$FINETUNE/xtuner_export" --prompt-template internlm2_chat \
    --image "$IMAGE" --prompt "What color is the shape?" --temperature 0 --no-streamer | tail -n 1)
HF_ANSWER=$(mmllava chat "work_dirs/$FINETUNE/hf_export" --image "$IMAGE" --prompt "What color is the shape?" \
    --temperature 0 --no-streamer | tail -n 1)
mmllava eval "work_dirs/$FINETUNE/hf_export" --data data/synthetic/eval.json --image-folder data/synthetic/images \
    --out "work_dirs/$FINETUNE/eval.jsonl" --max-new-tokens 4 > /dev/null
# Colour is what the tiny models learn from pixels in 2 minutes; shape, count and side stay near chance.
python - "$IMAGE" "$XTUNER_ANSWER" "$HF_ANSWER" "work_dirs/$FINETUNE/eval.jsonl" <<'PY'
import json, os, sys
from mmllava.datatools.evaluate import exact_match

image, xtuner, hf, predictions = sys.argv[1:]
samples = json.load(open('data/synthetic/eval.json'))
gold = next(s for s in samples if s['image'] == os.path.basename(image))['conversations'][-1]['value']
ok = True
for export, answer in (('xtuner export', xtuner), ('huggingface export', hf)):
    print(f'{export}: expected {gold}, got {answer}')
    ok &= exact_match(answer, gold)
records = [json.loads(line) for line in open(predictions)]
colour = [r for r, s in zip(records, samples) if s['conversations'][0]['value'].endswith('What color is the shape?')]
colour_right, right = sum(r['correct'] for r in colour), sum(r['correct'] for r in records)
print(f'held-out colour questions: {colour_right}/{len(colour)} = {colour_right / len(colour):.0%} '
      f'(all questions: {right}/{len(records)} = {right / len(records):.0%})')
ok &= colour_right >= 0.9 * len(colour)
print('quickstart: OK' if ok else 'quickstart: FAILED (a wrong answer, or colour accuracy below 90%)')
sys.exit(0 if ok else 1)
PY
