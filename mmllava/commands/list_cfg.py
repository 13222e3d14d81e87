"""List the shipped configs, optionally only those whose name contains PATTERN."""


def add_arguments(parser):
    parser.add_argument('-p', '--pattern', default=None, help='case-insensitive substring (or glob) to filter names')


def run(args):
    import fnmatch

    from mmllava.config_source import shipped_configs

    names = sorted(shipped_configs())
    if args.pattern:
        pat = args.pattern.lower()
        glob = any(c in pat for c in '*?[')
        names = [n for n in names if (fnmatch.fnmatch(n.lower(), pat) if glob else pat in n.lower())]
    print('=' * 60)
    print('configs' + (f' matching {args.pattern!r}' if args.pattern else '') + ':')
    for name in names:
        print(name)
    print('=' * 60)
    return 0 if names else 1
