"""Chat with a model: an LLM (text), an LLM + vision encoder + `--llava` xtuner export, or a LLaVA
folder (huggingface export). Without --prompt it is an interactive loop on stdin (`exit` or EOF
ends it); each --prompt is one turn, answered in order, then it exits."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.

import os
import sys

from mmllava.errors import MMLLaVAError


def add_arguments(parser):
    parser.add_argument('model', metavar='MODEL', help='LLM folder, or a LLaVA (huggingface export) folder')
    parser.add_argument('--llava', metavar='DIR', help='xtuner-format export (projector/, llm_adapter/, ...)')
    parser.add_argument('--visual-encoder', metavar='PATH',
                        help='CLIP vision encoder folder (with --llava; or for an original-layout LLaVA folder)')
    parser.add_argument('--prompt-template', metavar='NAME', help='prompt template (default: the one the export records)')
    parser.add_argument('--image', metavar='PATH', help='image to ask about (attached to the first turn)')
    parser.add_argument('--system', metavar='TEXT', help='system prompt')
    parser.add_argument('--prompt', action='append', metavar='TEXT', help='a user turn; repeat for more turns')
    parser.add_argument('--max-new-tokens', type=int, default=2048)
    parser.add_argument('--temperature', type=float, default=0.1, help='0 = greedy decoding')
    parser.add_argument('--top-p', type=float, default=0.75)
    parser.add_argument('--top-k', type=int, default=40, help='0 = no top-k filter')
    parser.add_argument('--repetition-penalty', type=float, default=1.0)
    parser.add_argument('--seed', type=int, default=None, help='seed for reproducible sampling')
    parser.add_argument('--torch-dtype', default='auto', choices=('auto', 'float32', 'bfloat16', 'float16'))
    parser.add_argument('--bits', type=int, choices=(4, 8), default=None, help='load the LLM in 4/8 bits (CUDA only)')
    parser.add_argument('--no-streamer', action='store_true', help='print each answer when it is complete')


def _user_turns(prompts):
    """The --prompt texts, or lines read interactively until `exit` or end of input."""
    if prompts:
        yield from prompts
        return
    while True:
        try:
            text = input('\n>>> ' if sys.stdin.isatty() else '')
        except EOFError:
            return
        if text.strip().lower() == 'exit':
            return
        if text.strip():
            yield text


def run(args):
    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.data.image import load_image

    image = None
    if args.image:  # fail on a bad path before loading the model
        if not os.path.isfile(args.image):
            raise MMLLaVAError(f'--image: image file not found: {os.path.abspath(args.image)} '
                               f'(a relative path is read from the current folder {os.getcwd()})')
        image = load_image(args.image)
    chat_model = load_chat_model(args.model, llava=args.llava, visual_encoder=args.visual_encoder,
                                 prompt_template=args.prompt_template, torch_dtype=args.torch_dtype, bits=args.bits)
    if image is not None and chat_model.image_processor is None:
        raise MMLLaVAError(f'{args.model} is a text-only LLM: --image needs --llava DIR or a LLaVA folder')
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty)
    session = ChatSession(chat_model, system=args.system, settings=settings, seed=args.seed)

    def stream(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    for text in _user_turns(args.prompt):
        answer = session.ask(text, image=image, stream_callback=None if args.no_streamer else stream)
        print(answer if args.no_streamer else '', flush=True)
        image = None  # the image belongs to the first turn
    return 0
