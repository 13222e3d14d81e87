"""Convert checkpoints: `pth_to_hf` turns a training checkpoint into an xtuner / huggingface /
official folder (`internvl_to_official` is its InternVL official-format spelling, as XTuner's
convert_to_official.py); `merge` merges a PEFT adapter into its base model."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def add_arguments(parser):
    actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
    p = actions.add_parser('pth_to_hf', help='training checkpoint -> model folder',
                           description='Convert CHECKPOINT (iter_N.pth, a DeepSpeed checkpoint folder or a work '
                                       'dir) trained with CONFIG into SAVE_DIR.')
    p.add_argument('config', metavar='CONFIG', help='config file or shipped config name')
    p.add_argument('checkpoint', metavar='CHECKPOINT', help='iter_N.pth file or folder, or a work dir (last checkpoint)')
    p.add_argument('save_dir', metavar='SAVE_DIR')
    p.add_argument('--save-format', default=None, choices=('xtuner', 'huggingface', 'official'),
                   help='LLaVA: xtuner (adapters + projector, default), huggingface (merged '
                        'LlavaForConditionalGeneration) or official (original LLaVA layout); InternVL: official '
                        '(InternVLChatModel layout, LoRA merged, default) or huggingface '
                        '(InternVLForConditionalGeneration)')
    _export_options(p)
    p = actions.add_parser('internvl_to_official', help='InternVL training checkpoint -> official InternVL folder',
                           description='Convert CHECKPOINT trained with the InternVL CONFIG into the official '
                                       'InternVL layout in SAVE_DIR, LoRA merged (pth_to_hf --save-format official).')
    p.add_argument('config', metavar='CONFIG', help='InternVL config file or shipped config name')
    p.add_argument('checkpoint', metavar='CHECKPOINT', help='iter_N.pth file or folder, or a work dir (last checkpoint)')
    p.add_argument('save_dir', metavar='SAVE_DIR')
    _export_options(p)
    p = actions.add_parser('merge', help='merge a PEFT adapter into its base model',
                           description='Merge the LoRA ADAPTER folder into BASE and save a plain model in SAVE_DIR.')
    p.add_argument('base', metavar='BASE', help='base model folder (an LLM, or a CLIP with --is-clip)')
    p.add_argument('adapter', metavar='ADAPTER', help='PEFT adapter folder (adapter_config.json)')
    p.add_argument('save_dir', metavar='SAVE_DIR')
    p.add_argument('--is-clip', action='store_true', help='BASE is a CLIP vision encoder')
    p.add_argument('--fp32', action='store_true', help='save float32 weights (default: the base model dtype)')
    p.add_argument('--max-shard-size', default='2GB', help='largest safetensors shard (default 2GB)')


def _export_options(p):
    p.add_argument('--fp32', action='store_true', help='keep float32 weights (default bfloat16, float16 if trained so)')
    p.add_argument('--max-shard-size', default='2GB', help='largest safetensors shard (default 2GB)')
    p.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', help='override config settings')


def run(args):
    if args.action in ('pth_to_hf', 'internvl_to_official'):
        from mmllava.config import parse_cfg_options
        from mmllava.convert.pth_to_hf import pth_to_hf

        internvl = args.action == 'internvl_to_official'
        pth_to_hf(args.config, args.checkpoint, args.save_dir, 'official' if internvl else args.save_format, args.fp32,
                  args.max_shard_size, parse_cfg_options(args.cfg_options), internvl_only=internvl)
    else:
        from mmllava.convert.merge import merge_adapter

        merge_adapter(args.base, args.adapter, args.save_dir, args.is_clip, args.max_shard_size, args.fp32)
    return 0
