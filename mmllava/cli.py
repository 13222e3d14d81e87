"""The ``mmllava`` command line. Verb modules live in ``mmllava/commands`` and import heavy
libraries only inside their ``run`` function, so ``mmllava --help`` answers at once."""
from __future__ import annotations

import argparse
import importlib
import sys

from mmllava import __version__, quiet
from mmllava.errors import MissingExtraError, MMLLaVAError

# verb -> (module under mmllava.commands, one-line help). Verbs appear here only once they work.
VERBS = {
    'list-cfg': ('list_cfg', 'list the shipped configs'),
    'copy-cfg': ('copy_cfg', 'copy a shipped config to a folder as NAME_copy.py'),
    'convert': ('convert', 'convert a training checkpoint to a model folder, or merge a LoRA adapter'),
    'chat': ('chat', 'chat with a model (text, or an image with --image)'),
    'build': ('build_llava', 'build an untrained LLaVA folder from an LLM and a vision encoder'),
    'train': ('train', 'train from a config (optionally with DeepSpeed ZeRO)'),
    'data': ('data', 'prepare data files: repeat a data set N times, convert FoodieQA'),
    'check-dataset': ('check_dataset', "check a config's training data: counts, bad samples, images, lengths"),
    'log-dataset': ('log_dataset', "print a config's training samples as the model sees them"),
    'eval': ('eval', 'evaluate a model on a data file (exact-match / multiple-choice accuracy)'),
    'demo': ('demo', 'a web page to chat with a model about images (Gradio)'),
    'serve': ('serve', 'an OpenAI-compatible HTTP API for a model (/v1/chat/completions)'),
    'plan': ('plan', 'predict peak GPU memory of a config and the batch that fits a GPU'),
    'bench': ('bench', 'time a config: runner vs bare PyTorch loop, tokens/s, padding, memory'),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``mmllava: error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see `{self.prog} --help`)\n')


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='mmllava', description='Fine-tune multimodal LLMs (LLaVA, InternVL2) from configs.')
    parser.add_argument('--version', action='version', version=f'mmllava {__version__}')
    sub = parser.add_subparsers(dest='verb', metavar='VERB', parser_class=ArgumentParser)
    for verb, (module, help_text) in VERBS.items():
        mod = importlib.import_module(f'mmllava.commands.{module}')
        p = sub.add_parser(verb, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    quiet.install()  # before any library is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MissingExtraError as e:
        print(f'mmllava {args.verb}: {e}', file=sys.stderr)
        return 1
    except MMLLaVAError as e:
        print(f'mmllava {args.verb}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'mmllava {args.verb}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
