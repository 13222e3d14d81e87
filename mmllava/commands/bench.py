"""Benchmark a config: steady-state seconds per step, samples/s, real (non-padding) tokens/s, padding,
data-loading wait and peak memory, through the mmengine runner and through a bare PyTorch loop on
the same model, batches and optimizer; their ratio is the framework's overhead.

Nothing is saved (no checkpoints, no evaluation). See docs/benchmarks.md for measured figures.
"""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def add_arguments(parser):
    parser.add_argument('config', metavar='CONFIG', help='config file or shipped config name (see list-cfg)')
    parser.add_argument('--steps', type=int, default=20, help='steady-state steps to time (default: 20)')
    parser.add_argument('--warmup', type=int, default=3, help='steps run first and not timed (default: 3)')
    parser.add_argument('--repeats', type=int, default=1,
                        help='alternate runner and bare loop this many times; medians and the spread of the paired '
                             'ratios are reported (default: 1)')
    parser.add_argument('--json', metavar='OUT', help='also write the full result as JSON to OUT')
    parser.add_argument('--no-reference', action='store_true', help='time the runner only, not the bare loop')
    parser.add_argument('--deepspeed', metavar='ZERO',
                        help='run both loops through DeepSpeed: zero1|zero2|zero3|... or a JSON file, as for train')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config values, as for train')


def run(args):
    import json

    from mmllava.bench.comparison import benchmark, format_table
    from mmllava.config import load_config, parse_cfg_options
    from mmllava.config_errors import reported_config_errors
    from mmllava.engine.launch import in_process_world
    from mmllava.errors import MMLLaVAError

    for name in ('steps', 'warmup', 'repeats'):
        minimum = 0 if name == 'warmup' else 1
        if getattr(args, name) < minimum:
            raise MMLLaVAError(f'--{name} must be at least {minimum}, got {getattr(args, name)}')
    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    with in_process_world(), reported_config_errors(cfg):  # --deepspeed starts a world of one
        result = benchmark(cfg, args.steps, args.warmup, args.repeats, reference=not args.no_reference,
                           deepspeed=args.deepspeed)
    print(format_table(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0
