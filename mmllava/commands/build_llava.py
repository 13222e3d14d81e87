"""Build an untrained LLaVA (a transformers Llava folder with processor) from an LLM and a vision encoder."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def add_arguments(parser):
    parser.add_argument('--llm', required=True, metavar='PATH', help='LLM folder (InternLM2, Llama-3, Qwen2.5, ...)')
    parser.add_argument('--visual-encoder', required=True, metavar='PATH', help='CLIP vision encoder folder')
    parser.add_argument('save_dir', metavar='SAVE_DIR')
    parser.add_argument('--torch-dtype', default='auto', choices=('auto', 'float32', 'bfloat16', 'float16'),
                        help="weights' dtype (auto: the LLM's)")
    parser.add_argument('--prompt-template', default=None, help='template recorded for chat (default: guessed)')
    parser.add_argument('--max-shard-size', default='2GB', help='largest safetensors shard (default 2GB)')


def run(args):
    from mmllava.convert.untrained_llava import build_llava

    build_llava(args.llm, args.visual_encoder, args.save_dir, args.torch_dtype, args.prompt_template,
                args.max_shard_size)
    return 0
