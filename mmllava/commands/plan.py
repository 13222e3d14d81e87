"""Predict a config's peak GPU memory before renting a GPU: sequence lengths of its data (image
positions counted), parameters by part and storage type, gradients and optimizer state per ZeRO
stage, activations per sample with and without checkpointing, the peak per GPU, and the largest
batch that fits --gpu-mem. Reads config.json files and the data's tokenisation only; a model folder
that is not on this machine is described from mmllava's shipped architecture files."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def _size(text: str) -> int:
    import re

    from mmllava.errors import MMLLaVAError

    match = re.fullmatch(r'\s*([\d.]+)\s*([GMT]i?B?)?\s*', text, re.IGNORECASE)
    if not match:
        raise MMLLaVAError(f'--gpu-mem: expected a size such as 24GB or 80GiB, got {text!r}')
    unit = (match.group(2) or 'G')[0].upper()
    return int(float(match.group(1)) * {'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}[unit])


def add_arguments(parser):
    parser.add_argument('config', metavar='CONFIG', help='config file or shipped config name (see list-cfg)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE', help='override config values')
    parser.add_argument('--gpu-mem', metavar='SIZE', help='GPU memory to fit, e.g. 24GB (GiB are meant)')
    parser.add_argument('--num-gpus', type=int, default=1, metavar='N', help='GPUs training together (default 1)')
    parser.add_argument('--deepspeed', metavar='ZERO',
                        help='zero1|zero2|zero3|zero2_offload|zero3_offload or a JSON file')
    parser.add_argument('--json', metavar='OUT', help='also write the numbers (bytes) to this JSON file')


def run(args):
    import json

    from mmllava.config import load_config, parse_cfg_options

    from mmllava.config_errors import reported_config_errors
    from mmllava.plan.planner import make_plan
    from mmllava.plan.printed_plan import plan_json, plan_lines

    gpu_mem = _size(args.gpu_mem) if args.gpu_mem else None
    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    with reported_config_errors(cfg, builds='train_dataloader.dataset'):
        plan = make_plan(cfg, num_gpus=args.num_gpus, deepspeed=args.deepspeed)
    print('\n'.join(plan_lines(plan, gpu_mem)), flush=True)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(plan_json(plan), f, indent=2, default=str)
    return 0
