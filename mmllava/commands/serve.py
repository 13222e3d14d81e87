"""Serve a model over HTTP with an OpenAI-compatible API: POST /v1/chat/completions (text and
image_url parts, `"stream": true` as server-sent events), GET /v1/models, GET /health. MODEL and its
options are `mmllava chat`'s. One generation runs at a time; up to --max-queue requests wait, more
get HTTP 503. Images come as data URLs, or as local paths inside --allow-local-images DIR."""
from mmllava.chat.arguments import add_model_arguments


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default: localhost only)')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--max-queue', type=int, default=8, metavar='N',
                        help='requests that may wait behind the running one; more get HTTP 503 (default 8)')
    parser.add_argument('--allow-local-images', metavar='DIR',
                        help='let image_url name local files inside DIR (default: data URLs only)')
    parser.add_argument('--max-upload-mb', type=float, default=32, metavar='N',
                        help='largest request body in MB, images included (default 32)')


def run(args):
    from mmllava.errors import require_extra
    require_extra('serve', 'fastapi', 'uvicorn')
    from pathlib import Path

    from mmllava.errors import MMLLaVAError

    allow = Path(args.allow_local_images).expanduser().resolve() if args.allow_local_images else None
    if allow is not None and not allow.is_dir():
        raise MMLLaVAError(f'--allow-local-images {args.allow_local_images}: not a folder')
    if args.max_queue < 1 or args.max_upload_mb <= 0:
        raise MMLLaVAError('--max-queue must be >= 1 and --max-upload-mb > 0')

    import uvicorn

    from mmllava.chat.arguments import load_model_from_args, model_name
    from mmllava.serve.api import create_app
    from mmllava.serve.worker import GenerationWorker

    worker = GenerationWorker(load_model_from_args(args), args.max_queue)
    app = create_app(worker, model_name(args), allow, int(args.max_upload_mb * 2**20))
    if args.host not in ('127.0.0.1', 'localhost', '::1'):
        print(f'mmllava serve: warning: listening on {args.host} without authentication', flush=True)
    print(f'mmllava serve: model {model_name(args)!r} at http://{args.host}:{args.port}/v1', flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level='info', access_log=False)
    return 0
