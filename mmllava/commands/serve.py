"""Serve a model over HTTP with an OpenAI-compatible API: POST /v1/chat/completions (text and
image_url parts, `"stream": true` as server-sent events), GET /v1/models, GET /health. MODEL and its
options are `mmllava chat`'s. One generation runs at a time; up to --max-queue requests wait, more
get HTTP 503. Images come as data URLs, or as local paths inside --allow-local-images DIR. Requests
over a budget (image pixels, images, prompt tokens, body size) are refused before any work."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

import os
from pathlib import Path

from mmllava.chat.arguments import add_model_arguments
from mmllava.errors import MMLLaVAError, require_extra


def add_guard_arguments(parser) -> None:
    """The options ``serve`` and ``demo`` share: ``--max-image-pixels`` and ``--allowed-hosts``."""
    from mmllava.serve.limits import DEFAULT_MAX_IMAGE_PIXELS

    parser.add_argument('--max-image-pixels', type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar='N',
                        help='largest image, in 8-bit RGB pixels (16-bit and alpha pixels count more: they take '
                             f'more memory to decode), checked from its header (default {DEFAULT_MAX_IMAGE_PIXELS})')
    parser.add_argument('--allowed-hosts', default='', type=lambda text: [n for n in text.split(',') if n.strip()],
                        metavar='NAMES', help='comma-separated host names the server may be addressed by besides '
                                              'IP addresses and localhost (the Host header, against DNS '
                                              'rebinding); * for any')


def add_arguments(parser):
    from mmllava.serve.limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_REQUEST_PIXELS

    add_model_arguments(parser)
    add_guard_arguments(parser)
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default: localhost only)')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--max-queue', type=int, default=8, metavar='N',
                        help='requests that may wait behind the running one; more get HTTP 503 (default 8)')
    parser.add_argument('--allow-local-images', metavar='DIR',
                        help='let image_url name local regular files inside DIR; symlinks may point only '
                             'inside DIR (default: data URLs only)')
    parser.add_argument('--max-upload-mb', type=float, default=32, metavar='N',
                        help='largest request body in MB, images included, and largest local image file (default 32)')
    parser.add_argument('--max-request-pixels', type=int, default=DEFAULT_MAX_REQUEST_PIXELS, metavar='N',
                        help=f'pixels of all images of a request, counted so (default {DEFAULT_MAX_REQUEST_PIXELS})')
    parser.add_argument('--max-images', type=int, default=DEFAULT_MAX_IMAGES, metavar='N',
                        help='images per request, the earlier turns of the conversation included '
                             f'(default {DEFAULT_MAX_IMAGES})')
    parser.add_argument('--max-prompt-tokens', type=int, metavar='N',
                        help="longest prompt in tokens, image positions included (default: the model's context); "
                             "max_tokens is capped at the context the prompt leaves")
    parser.add_argument('--header-timeout', type=float, default=10, metavar='S',
                        help='seconds for a request line and headers to arrive (default 10)')
    parser.add_argument('--body-timeout', type=float, default=60, metavar='S',
                        help='seconds for a request body to arrive; slower ones get HTTP 408 (default 60)')
    parser.add_argument('--max-connections', type=int, default=64, metavar='N',
                        help='open connections; more get HTTP 503 (default 64)')
    parser.add_argument('--api-key', metavar='KEY',
                        help='require "Authorization: Bearer KEY" on /v1/ routes (default: the MMLLAVA_API_KEY '
                             'environment variable; none if unset)')


def run(args):
    require_extra('serve', 'fastapi', 'uvicorn')

    allow = Path(args.allow_local_images).expanduser().resolve() if args.allow_local_images else None
    if allow is not None and not allow.is_dir():
        raise MMLLaVAError(f'--allow-local-images {args.allow_local_images}: not a folder')
    for name in ('max_queue', 'max_image_pixels', 'max_request_pixels', 'max_images', 'max_connections'):
        if getattr(args, name) < 1:
            raise MMLLaVAError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('max_upload_mb', 'header_timeout', 'body_timeout'):
        if not getattr(args, name) > 0:
            raise MMLLaVAError(f'--{name.replace("_", "-")} must be > 0, got {getattr(args, name)}')
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise MMLLaVAError(f'--max-prompt-tokens must be >= 1, got {args.max_prompt_tokens}')
    api_key = args.api_key or os.environ.get('MMLLAVA_API_KEY') or None

    from PIL import Image

    from mmllava.chat.arguments import load_model_from_args, model_name
    from mmllava.data.image import DEFAULT_MAX_PIXELS as DEFAULT_PIL_MAX_PIXELS
    from mmllava.serve.api import create_app
    from mmllava.serve.http import run_server
    from mmllava.serve.limits import Limits
    from mmllava.serve.worker import GenerationWorker

    # PIL's own bomb check (an error past twice this, from the header) stays on as a backstop behind
    # the budget, which decides first with a clearer message: on, and above what the budget allows.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, DEFAULT_PIL_MAX_PIXELS, 2 * args.max_image_pixels)
    limits = Limits(args.max_image_pixels, args.max_request_pixels, args.max_images, args.max_prompt_tokens)
    worker = GenerationWorker(load_model_from_args(args), args.max_queue)
    app = create_app(worker, model_name(args), allow, int(args.max_upload_mb * 2**20), limits, args.body_timeout,
                     args.allowed_hosts, api_key)
    if args.host not in ('127.0.0.1', 'localhost', '::1') and api_key is None:
        print(f'mmllava serve: warning: listening on {args.host} without authentication (--api-key)', flush=True)
    print(f'mmllava serve: model {model_name(args)!r} at http://{args.host}:{args.port}/v1', flush=True)
    run_server(app, args.host, args.port, worker.close, args.header_timeout, args.max_connections)
    return 0
