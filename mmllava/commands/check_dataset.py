"""Check a config's training data before training: counts (samples, with image, text-only, turns),
every bad sample as FILE:INDEX: reason (missing / unreadable / corrupt / oversized images, <image>
placeholders that disagree with the images, wrong roles, empty answers, samples with no trained
token after truncation), every image verified, a token-length summary and the samples longer than
max_length. Exit code 1 when training would stop on or lose any sample, 0 otherwise. Loads only
the tokenizer and the image processor, never model weights."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def add_arguments(parser):
    parser.add_argument('config', metavar='CONFIG', help='config file or shipped config name (see list-cfg)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config values, as for train')
    parser.add_argument('--no-verify-images', action='store_true',
                        help='check image headers only (faster on huge data sets)')


def run(args):
    from mmengine.logging import MMLogger

    from mmllava.config import load_config, parse_cfg_options

    from mmllava.config_errors import reported_config_errors
    from mmllava.data.llava_dataset import read_samples
    from mmllava.datatools.inspect import build_training_dataset, inspect_dataset

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    # The dataset logs skipped samples as a warning; here the report lists them, so keep quiet.
    # An existing one is made current again without arguments (mmengine warns when given any).
    name = 'mmllava_check_dataset'
    if MMLogger.check_instance_created(name):
        MMLogger.get_instance(name)
    else:
        MMLogger.get_instance(name, log_level='ERROR')
    with reported_config_errors(cfg, builds='train_dataloader.dataset'):
        dataset = build_training_dataset(cfg, skip_bad_samples=True)
    report = inspect_dataset(dataset, read_samples(dataset.data_path), verify_images=not args.no_verify_images)
    print('\n'.join(report.lines()), flush=True)
    return 0 if report.ok else 1
