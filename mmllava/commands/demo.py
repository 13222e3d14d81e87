"""A web page to chat with a model about images (Gradio): upload or pick an example image, ask,
watch the answer stream in, keep going for several turns and images. MODEL and its options are
`mmllava chat`'s. Binds to localhost unless --host says otherwise, and has no authentication: put it
behind a proxy that authenticates before opening it to a network. The Host header is checked (against
DNS rebinding), and images over --max-image-pixels are refused from their header, before decoding."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

import os

from mmllava.chat.arguments import add_model_arguments
from mmllava.commands.serve import add_guard_arguments
from mmllava.errors import MMLLaVAError, require_extra


def add_arguments(parser):
    add_model_arguments(parser)
    add_guard_arguments(parser)
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default: localhost only)')
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('--examples', metavar='DIR', help='folder of example images offered in the page')
    parser.add_argument('--max-upload-mb', type=float, default=10, metavar='N',
                        help='largest image upload in MB (default 10)')
    parser.add_argument('--max-queue', type=int, default=16, metavar='N',
                        help='questions that may wait for the model; more are refused in the page (default 16)')


def run(args):
    require_extra('serve', 'gradio')

    if args.max_queue < 1 or args.max_upload_mb <= 0 or args.max_image_pixels < 1:
        raise MMLLaVAError('--max-queue and --max-image-pixels must be >= 1, and --max-upload-mb > 0')
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # offline first: no usage reports

    from mmllava.chat.arguments import load_model_from_args, model_name
    from mmllava.serve.gradio_page import THEME, build_demo, example_images
    from mmllava.serve.worker import GenerationWorker

    examples = example_images(args.examples)
    worker = GenerationWorker(load_model_from_args(args), args.max_queue)
    demo = build_demo(worker, f'mmllava demo: {model_name(args)}', examples, args.max_image_pixels)
    if args.host not in ('127.0.0.1', 'localhost', '::1'):
        print(f'mmllava demo: warning: listening on {args.host} without authentication', flush=True)
    # Gradio's own queue orders the questions (and shows users their place); the worker runs them.
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
    from starlette.middleware import Middleware

    from mmllava.serve.access import AccessControl

    host_check = Middleware(AccessControl, allowed_hosts=args.allowed_hosts, require_json=False)
    try:
        demo.launch(server_name=args.host, server_port=args.port, max_file_size=int(args.max_upload_mb * 2**20),
                    allowed_paths=[str(args.examples)] if examples else None, theme=THEME, show_error=True,
                    app_kwargs={'middleware': [host_check]})
    except OSError as e:  # the port is taken
        raise MMLLaVAError(f'cannot listen on {args.host}:{args.port}: {e}') from None
    return 0
