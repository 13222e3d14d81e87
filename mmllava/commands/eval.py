"""Evaluate a model on a LLaVA-format data file with greedy decoding: exact-match accuracy (the
last gpt turn is the gold answer; earlier turns are the prompt), or multiple-choice accuracy on
samples with `choices` and `answer` (`mmllava data foodieqa --eval`). MODEL is anything `mmllava
chat` loads (an LLM + --llava export + --visual-encoder, or a LLaVA folder), or a training CONFIG
with --checkpoint (iter_N.pth, a DeepSpeed checkpoint folder, or a work dir). Per-sample
predictions go to --out as JSONL; the accuracy is printed."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

import os

from mmllava.errors import MMLLaVAError


def add_arguments(parser):
    parser.add_argument('model', metavar='CONFIG_OR_MODEL',
                        help='model folder (as for chat), or a config with --checkpoint')
    parser.add_argument('--data', required=True, metavar='FILE', help='LLaVA-format .json / .jsonl to evaluate on')
    parser.add_argument('--image-folder', metavar='DIR',
                        help="folder the samples' image paths are relative to (default: the current folder, "
                             "else the data file's folder or its images/ when the paths resolve there)")
    parser.add_argument('--out', metavar='PRED.jsonl', help='write per-sample predictions here')
    parser.add_argument('--checkpoint', metavar='PTH', help='training checkpoint (CONFIG_OR_MODEL is its config)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE', help='config overrides (with --checkpoint)')
    parser.add_argument('--llava', metavar='DIR', help='xtuner-format export (projector/, llm_adapter/, ...)')
    parser.add_argument('--visual-encoder', metavar='PATH',
                        help='CLIP vision encoder folder (with --llava; or for an original-layout LLaVA folder)')
    parser.add_argument('--prompt-template', metavar='NAME', help='prompt template (default: the one the export records)')
    parser.add_argument('--system', metavar='TEXT', help='system prompt for samples without their own')
    parser.add_argument('--limit', type=int, metavar='N', help='evaluate the first N samples only')
    parser.add_argument('--max-new-tokens', type=int, default=64)
    parser.add_argument('--torch-dtype', default='auto', choices=('auto', 'float32', 'bfloat16', 'float16'))


def _checkpoint_chat_model(args):
    """A ``ChatModel`` around the LLaVA or InternVL model of a config with a training checkpoint loaded."""
    from mmllava.chat.loader import chat_model_for
    from mmllava.config import build, parse_cfg_options
    from mmllava.convert.pth_to_hf import load_trained_model
    from mmllava.data.packing import unpacked_dataset_cfg

    model, cfg = load_trained_model(args.model, args.checkpoint, parse_cfg_options(args.cfg_options))
    dataset = unpacked_dataset_cfg(cfg.get('train_dataloader', {}).get('dataset', {}))
    return chat_model_for(model, build(cfg.tokenizer), args.prompt_template or cfg.prompt_template,
                          build(cfg.image_processor), bool(dataset.get('pad_image_to_square', False)))


def run(args):
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.datatools.evaluate import evaluate

    if not os.path.isfile(args.data):
        raise MMLLaVAError(f'--data: file not found: {args.data}')
    if args.checkpoint:
        chat_model = _checkpoint_chat_model(args)
    elif not os.path.isdir(args.model):
        raise MMLLaVAError(f'{args.model}: not a model folder (to evaluate a training config, add --checkpoint PTH)')
    else:
        from mmllava.chat.loader import load_chat_model

        chat_model = load_chat_model(args.model, llava=args.llava, visual_encoder=args.visual_encoder,
                                     prompt_template=args.prompt_template, torch_dtype=args.torch_dtype)
    session = ChatSession(chat_model, settings=GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0))

    def progress(record):
        mark = 'ok ' if record['correct'] else 'err'
        print(f'[{record["index"]}] {mark} {record["prediction"]!r}', flush=True)

    result = evaluate(session, args.data, args.image_folder, args.out, args.limit, progress, args.system)
    if args.image_folder is None and result['image_folder'] is not None:
        print(f'image paths read relative to {result["image_folder"]} (beside --data; --image-folder to change)')
    kind = {0: 'exact-match', result['total']: 'multiple-choice'}.get(result['multiple_choice'], 'mixed')
    print(f'{kind} accuracy: {result["correct"]}/{result["total"]} = {result["accuracy"]:.4f}')
    if args.out:
        print(f'predictions: {args.out}')
    return 0
