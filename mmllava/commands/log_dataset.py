"""Print a config's training samples as the model sees them: `text` (the decoded input, images as
<image x N>), `masked_text` (only what the loss is computed on; untrained spans as [-100 x N]),
`input_ids`, `labels`, or `all`. Loads only the tokenizer and the image processor."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

from mmllava.constants import IGNORE_INDEX

SHOW = ('text', 'masked_text', 'input_ids', 'labels', 'all')


def add_arguments(parser):
    parser.add_argument('config', metavar='CONFIG', help='config file or shipped config name (see list-cfg)')
    parser.add_argument('--show', choices=SHOW, default='all', help='what to print (default: all)')
    parser.add_argument('-n', '--num-samples', type=int, default=1, metavar='N', help='samples to print (default 1)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config values, as for train')


def run(args):
    from mmllava.config import load_config, parse_cfg_options
    from mmllava.config_errors import reported_config_errors
    from mmllava.datatools.display import VIEWS, render_view
    from mmllava.datatools.inspect import build_training_dataset

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    with reported_config_errors(cfg, builds='train_dataloader.dataset'):
        dataset = build_training_dataset(cfg)
    views = VIEWS if args.show == 'all' else (args.show,)
    for sample in dataset.samples[:max(args.num_samples, 0)]:
        trained = sum(1 for label in sample['labels'] if label != IGNORE_INDEX)
        image = f', image {sample["image"]}' if sample['image'] is not None else ''
        print(f'=== {dataset.data_path}:{sample["index"]}: {len(sample["input_ids"])} tokens, '
              f'{trained} trained{image} ===')
        for view in views:
            print(f'--- {view} ---\n{render_view(view, sample["input_ids"], sample["labels"], dataset.tokenizer)}')
    return 0
