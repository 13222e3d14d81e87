"""The command-line arguments that name a model to chat with, shared by every verb that serves one
(``demo``, ``serve``) so they accept exactly what ``load_chat_model`` loads. Light: no torch import."""
from __future__ import annotations

from pathlib import Path


def add_model_arguments(parser) -> None:
    """MODEL, ``--llava``, ``--visual-encoder``, ``--prompt-template``, ``--torch-dtype``, ``--bits``."""
    parser.add_argument('model', metavar='MODEL', help='LLM folder, or a LLaVA (huggingface export) folder')
    parser.add_argument('--llava', metavar='DIR', help='xtuner-format export (projector/, llm_adapter/, ...)')
    parser.add_argument('--visual-encoder', metavar='PATH', help='CLIP vision encoder folder (with --llava; or for an original-layout LLaVA folder)')
    parser.add_argument('--prompt-template', metavar='NAME',
                        help='prompt template (default: the one the export records)')
    parser.add_argument('--torch-dtype', default='auto', choices=('auto', 'float32', 'bfloat16', 'float16'))
    parser.add_argument('--bits', type=int, choices=(4, 8), default=None,
                        help='load the LLM in 4/8 bits (CUDA only)')


def load_model_from_args(args):
    """The :class:`~mmllava.chat.loader.ChatModel` named by the arguments of :func:`add_model_arguments`."""
    # here, not at the top: `mmllava --help` imports this module (demo/serve arguments); the loader imports torch
    from mmllava.chat.loader import load_chat_model

    return load_chat_model(args.model, llava=args.llava, visual_encoder=args.visual_encoder,
                           prompt_template=args.prompt_template, torch_dtype=args.torch_dtype, bits=args.bits)


def model_name(args) -> str:
    """The name a served model goes by: its export folder's name (``--llava``), else MODEL's."""
    return Path(args.llava or args.model).expanduser().resolve().name
