"""What ``mmllava train`` shows in the terminal; the work dir's log file keeps everything.

The terminal gets a short header (``TrainSummaryHook``), one progress line per log interval
(``ConsoleFormatter``), the chat evaluations, warnings and the saved checkpoints. mmengine's
environment report, config dump and hook table, and the decoded first sample, go to the log file
only (``ConsoleFilter``), or to the terminal too with ``--verbose``.
"""
from __future__ import annotations

import logging
import os
import re

import torch
from mmengine._strategy.base import BaseStrategy
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from mmllava.engine.hooks import _unwrap

# INFO records that only the log file gets (by how the message starts).
_LOG_FILE_ONLY = (
    '\n' + '-' * 60 + '\nSystem environment',  # mmengine: environment report
    'Config:\n',  # mmengine: the whole config
    'Hooks will be executed in the following order',  # mmengine: ~90 lines of hook table
    'Distributed training is not used',  # mmengine: SyncBN note
    'Exp name: ',  # mmengine: repeated every epoch
    'Checkpoints will be saved to ',  # mmengine: the header names the work dir
    'training dataset: ',  # DatasetInfoHook: the header gives the counts
    'training sample ',  # DatasetInfoHook: the decoded first sample (log-dataset shows it too)
)
# Known-harmless WARNING records, dropped from the terminal (the log file keeps them).
_HARMLESS_WARNINGS = (
    # mmengine's own CheckpointHook still builds a FileClient, which mmengine deprecates.
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)
_PROGRESS = re.compile(r'^(?:Iter|Epoch)\(train\)\s+(?:\[\d+\])?\[\s*(\d+)/(\d+)\]\s+(.*)$', re.S)


class ConsoleFilter(logging.Filter):
    """Keeps a record off the terminal when it is in ``_LOG_FILE_ONLY`` (INFO) or
    ``_HARMLESS_WARNINGS``; ``verbose`` keeps everything."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(_HARMLESS_WARNINGS):
            return False
        return self.verbose or record.levelno > logging.INFO or not message.startswith(_LOG_FILE_ONLY)


def progress_line(message: str) -> str | None:
    """mmengine's ``Iter(train) [10/30]  lr: ...  eta: ...  time: ...  loss: ...`` as
    ``iter 10/30  loss 6.7014  lr 8.54e-04  0.52 s/it  ETA 0:00:10  mem 546 MB``; None for
    any other message."""
    match = _PROGRESS.match(message)
    if match is None:
        return None
    done, total, rest = match.groups()
    values = dict(re.findall(r'(\w+): (\S+)', rest))
    parts = [f'iter {done:>{len(total)}}/{total}']
    parts += [f'{key} {value}' for key, value in values.items() if key.startswith('loss')]
    if 'lr' in values:
        parts.append(f'lr {float(values["lr"]):.2e}')
    if 'time' in values:
        parts.append(f'{float(values["time"]):.2f} s/it')
    if 'eta' in values:
        parts.append(f'ETA {values["eta"]}')
    memory = values.get('memory') or values.get('rss_mb')  # CUDA peak (mmengine) or process RSS
    if memory:
        parts.append(f'mem {float(memory):.0f} MB')
    return '  '.join(parts)


class ConsoleFormatter(logging.Formatter):
    """The message alone (warnings and errors say so), progress lines shortened."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f'{record.levelname}: {message}'
        return progress_line(message) or message


def attach(logger: logging.Logger, verbose: bool = False) -> logging.Logger:
    """Give ``logger``'s terminal handlers the train console's filter and format (idempotent)."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(ConsoleFormatter())
            for old in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
                handler.removeFilter(old)
            handler.addFilter(ConsoleFilter(verbose))
    return logger


_VERBOSE = [False]


def install(verbose: bool = False) -> None:
    """Every mmengine logger built from now on (the runner's, or DeepSpeed strategy's) and the
    current one get the train console (``attach``)."""
    _VERBOSE[0] = verbose
    for cls in (Runner, BaseStrategy):
        if not getattr(cls.build_logger, '_mmllava_console', False):
            cls.build_logger = _attaching(cls.build_logger)
    attach(MMLogger.get_current_instance(), verbose)


def _attaching(build_logger):
    def build_logger_with_console(self, *args, **kwargs):
        return attach(build_logger(self, *args, **kwargs), _VERBOSE[0])

    build_logger_with_console._mmllava_console = True
    return build_logger_with_console


def _count(parameter) -> int:
    """Elements of a parameter: a 4-bit one counts its unpacked shape, a ZeRO-3 one its full size."""
    quant_state = getattr(parameter, 'quant_state', None)
    if quant_state is not None and getattr(quant_state, 'shape', None) is not None:
        return quant_state.shape.numel()
    return getattr(parameter, 'ds_numel', None) or parameter.numel()


def _size(n: int) -> str:
    for unit, scale in (('B', 1e9), ('M', 1e6), ('k', 1e3)):
        if n >= scale:
            return f'{n / scale:.1f}{unit}'
    return str(n)


class TrainSummaryHook(Hook):
    """The train header (config, work dir and log file, trainable / total parameters, data, device,
    threads, DeepSpeed stage) before training, and the checkpoints in the work dir after it."""

    priority = 'VERY_HIGH'  # before the hooks that print the chat evaluation

    def before_train(self, runner) -> None:
        model = _unwrap(runner.model)
        params = list(model.parameters())
        trainable = sum(_count(p) for p in params if p.requires_grad)
        total = sum(_count(p) for p in params)
        dataloader = runner.train_dataloader
        data_path = runner.cfg.get('data_path')
        device = next(iter(params)).device if params else torch.device('cpu')
        if device.type == 'cuda':
            device_text = f'{torch.cuda.get_device_name(device)} ({device})'
        else:
            device_text = str(device)
        strategy = runner.cfg.get('strategy') or {}
        stage = ((strategy.get('config') or {}).get('zero_optimization') or {}).get('stage')
        world = int(os.environ.get('WORLD_SIZE', 1))
        log_file = next((h.baseFilename for h in runner.logger.handlers if isinstance(h, logging.FileHandler)), None)
        lines = [
            f'config    {runner.cfg.filename}',
            f'work dir  {runner.work_dir}' + (f'  (full log: {log_file})' if log_file else ''),
            f'model     {_size(trainable)} trainable / {_size(total)} parameters',
            f'data      {len(dataloader.dataset)} samples' + (f' ({data_path})' if data_path else '')
            + f': {len(dataloader)} batches of {dataloader.batch_size} per epoch, {runner.max_iters} iterations',
            f'device    {device_text}, {torch.get_num_threads()} threads'
            + (f' x {world} processes' if world > 1 else '')
            + (f', DeepSpeed ZeRO-{stage}' if stage is not None else ', no DeepSpeed'),
        ]
        runner.logger.info('\n'.join(lines))

    def after_run(self, runner) -> None:
        names = [n for n in os.listdir(runner.work_dir) if re.fullmatch(r'(iter|epoch)_\d+\.pth', n)]
        if names:
            names.sort(key=lambda n: int(re.findall(r'\d+', n)[0]))
            runner.logger.info(f'checkpoints in {runner.work_dir}: {", ".join(names)}')
