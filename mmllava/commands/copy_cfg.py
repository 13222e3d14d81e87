"""Copy a shipped config (or a config file) to SAVE_DIR as NAME_copy.py, ready to edit; an override
config (a tiny one) is written out whole, as one standalone file."""


def add_arguments(parser):
    parser.add_argument('config_name', metavar='CONFIG_NAME', help='shipped config name (see list-cfg) or a path')
    parser.add_argument('save_dir', metavar='SAVE_DIR', help='folder to write NAME_copy.py into')


def run(args):
    from mmllava.config import copy_config

    dst = copy_config(args.config_name, args.save_dir)
    print(f'Copy to {dst}')
    return 0
