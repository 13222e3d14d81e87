"""Train from a config (a path or a shipped config name), optionally with DeepSpeed ZeRO.

Checkpoints (iter_N.pth) and logs go to --work-dir (default work_dirs/CONFIG_NAME).
Several processes: NPROC_PER_NODE=N mmllava train ... (plus NNODES, NODE_RANK, ADDR, PORT for
several nodes), or start it under torchrun / srun with --launcher pytorch / slurm.
"""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

_RESUME_LATEST = object()


def add_arguments(parser):
    parser.add_argument('config', metavar='CONFIG', help='config file or shipped config name (see list-cfg)')
    parser.add_argument('--work-dir', help='folder for checkpoints and logs (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--deepspeed', metavar='ZERO',
                        help='zero1|zero2|zero3|zero2_offload|zero3_offload (also deepspeed_zero2 ...) or a JSON file')
    parser.add_argument('--resume', nargs='?', const=_RESUME_LATEST, default=None, metavar='CHECKPOINT',
                        help='resume from CHECKPOINT, or without a value from the latest in the work dir')
    parser.add_argument('--seed', type=int, help='random seed (default: the config\'s randomness.seed)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config values; top-level variables (data_root=...) also update '
                             'every field derived from them')
    parser.add_argument('--verbose', action='store_true',
                        help="also show the log file's whole content in the terminal (config dump, hook table)")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='how the processes were started (default: none, or torchrun via NPROC_PER_NODE)')


def _argv(args) -> list[str]:
    """The train arguments again, for re-running this command under torchrun."""
    argv = [args.config]
    for flag, value in (('--work-dir', args.work_dir), ('--deepspeed', args.deepspeed), ('--seed', args.seed)):
        if value is not None:
            argv += [flag, str(value)]
    if args.resume is _RESUME_LATEST:
        argv.append('--resume')
    elif args.resume is not None:
        argv += ['--resume', args.resume]
    if args.verbose:
        argv.append('--verbose')
    if args.cfg_options:
        argv += ['--cfg-options', *args.cfg_options]
    return argv


def _created_by_run(work_dir: str):
    """What a run in ``work_dir`` may leave behind: ``(top, before)`` where ``top`` is the highest
    folder of ``work_dir``'s path that does not exist yet (None if it does) and ``before`` the
    names already in ``work_dir``."""
    import os

    top, path = None, os.path.abspath(work_dir)
    while not os.path.exists(path):
        top, path = path, os.path.dirname(path)
    return top, (set() if top else set(os.listdir(work_dir)))


def _remove_empty_run(work_dir: str, top, before) -> None:
    """After a run failed: if it saved no checkpoint, remove the folders it made (its timestamped
    log folder, and the work dir itself when the run created it)."""
    import os
    import re
    import shutil

    if not os.path.isdir(work_dir):
        return
    new = set(os.listdir(work_dir)) - before
    if any(re.fullmatch(r'(iter|epoch)_\d+\.pth', name) for name in new):
        return
    if top is not None:
        shutil.rmtree(top, ignore_errors=True)
        return
    for name in new:
        if re.fullmatch(r'\d{8}_\d{6}', name):  # mmengine's timestamped log folder
            shutil.rmtree(os.path.join(work_dir, name), ignore_errors=True)


def run(args):
    import os
    import os.path as osp
    import subprocess

    from mmllava.engine.launch import in_process_world, torchrun_command

    if args.launcher == 'none':
        command = torchrun_command(_argv(args))
        if command is not None:
            print('launching: ' + ' '.join(command), flush=True)
            return subprocess.run(command).returncode

    from mmllava.config import load_config, parse_cfg_options

    from mmllava.config_errors import reported_config_errors
    from mmllava.engine import console
    from mmllava.engine.runner import build_runner, prepare_config

    console.install(args.verbose)  # before prepare_config logs its first line

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    work_dir = args.work_dir or osp.join('work_dirs', osp.splitext(osp.basename(cfg.filename))[0])
    resume = True if args.resume is _RESUME_LATEST else args.resume
    created = _created_by_run(work_dir)
    try:
        with in_process_world(), reported_config_errors(cfg):
            cfg = prepare_config(cfg, work_dir=work_dir, deepspeed=args.deepspeed, launcher=args.launcher,
                                 resume=resume, seed=args.seed)
            from mmllava.plan.planner import peak_line  # the plan's predicted peak, one header line
            if os.environ.get('RANK', '0') == '0':  # once per run, not once per torchrun process
                print(peak_line(cfg, args.deepspeed), flush=True)
            build_runner(cfg, verbose=args.verbose).train()
    except BaseException:
        _remove_empty_run(work_dir, *created)
        raise
    return 0
