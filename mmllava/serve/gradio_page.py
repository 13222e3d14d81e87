"""The Gradio chat page of ``mmllava demo``: upload (or pick an example) image, ask, watch the answer
stream in; several turns and several images in one conversation, a clear button, and sampling
settings. The page keeps the conversation; every question is a stateless
:class:`~mmllava.serve.worker.ChatRequest` run by the shared :class:`GenerationWorker` (the model
never runs on Gradio's event loop). Errors appear in the page as Gradio error messages.

An uploaded image is checked from its header against the server's pixel budget
(:mod:`mmllava.serve.limits`) before it is decoded: Gradio hands the file over undecoded
(``image_mode=None``), and the page decodes one image at a time (one question at a time).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from mmllava.chat.session import GenerationSettings
from mmllava.errors import MMLLaVAError
from mmllava.serve.limits import DEFAULT_MAX_IMAGE_PIXELS, RequestError, decode_image, inspect_image
from mmllava.serve.worker import Answer, Busy, ChatRequest, Exchange, GenerationWorker, stream

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif')
# System fonts: the default theme loads its fonts from the internet, and demos often run offline.
THEME = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'], font_mono=['ui-monospace', 'monospace'])


@dataclass
class Turn:
    """One question and answer as the page shows it: the exchange and the image files it showed."""

    exchange: Exchange
    image_paths: list[str] = field(default_factory=list)


def example_images(folder: str | Path | None) -> list[str]:
    """The image files directly in ``folder``, sorted (none when ``folder`` is ``None``)."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise MMLLaVAError(f'--examples {folder}: not a folder')
    return [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def chat_messages(turns: list[Turn]) -> list[dict]:
    """The Chatbot's messages for ``turns``: each image, then the question, then the answer."""
    messages = []
    for turn in turns:
        messages += [{'role': 'user', 'content': {'path': path}} for path in turn.image_paths]
        # The page shows the text as is: a text part, as Gradio dedents and strips plain strings, and
        # escaped, as the Chatbot renders HTML tags (a model's "<s>" would vanish).
        messages.append({'role': 'user', 'content': {'type': 'text', 'text': html.escape(turn.exchange.text)}})
        messages.append({'role': 'assistant', 'content': {'type': 'text', 'text': html.escape(turn.exchange.answer)}})
    return messages


def load_upload(path: str, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """An uploaded image file as RGB, refused (``MMLLaVAError``) from its header if it is over the
    pixel budget or not an image this server reads."""
    try:
        raw = Path(path).read_bytes()  # Gradio has already limited its size (--max-upload-mb)
        return decode_image(inspect_image(raw, 'image', max_image_pixels).raw, 'image')
    except OSError as e:
        raise MMLLaVAError(f'image: cannot read the upload: {e.strerror}') from None
    except RequestError as e:
        raise MMLLaVAError(str(e)) from None


def build_demo(worker: GenerationWorker, title: str, examples: list[str] = (),
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> gr.Blocks:
    """The page for ``worker``'s model; ``examples`` are image files offered as one-click inputs;
    ``max_image_pixels`` the pixel budget of an image (:func:`~mmllava.serve.limits.inspect_image`)."""

    async def respond(text, image_path, turns, max_new_tokens, temperature, top_p):
        text = (text or '').strip()
        if not text:
            raise gr.Error('Type a question first.')
        settings = GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
        try:
            images = [load_upload(image_path, max_image_pixels)] if image_path else []
            settings.generate_kwargs()  # invalid settings fail here, before the turn is shown
            events = stream(worker, ChatRequest(text, images, [t.exchange for t in turns], settings=settings))
        except (MMLLaVAError, Busy) as e:
            raise gr.Error(str(e)) from None
        turn = Turn(Exchange(text, '', images), [image_path] if image_path else [])
        busy = gr.update(interactive=False)  # no second question while this one is answered
        try:
            async for event in events:
                turn.exchange.answer = event.text if isinstance(event, Answer) else turn.exchange.answer + event
                yield chat_messages([*turns, turn]), gr.skip(), '', None, busy
        except Exception as e:  # show the conversation without the failed turn, and why it failed
            yield chat_messages(turns), gr.skip(), text, image_path, gr.update(interactive=True)
            raise gr.Error(str(e) if isinstance(e, MMLLaVAError) else f'{type(e).__name__}: {e}') from None
        yield chat_messages([*turns, turn]), [*turns, turn], '', None, gr.update(interactive=True)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f'## {title}\nUpload an image (or pick an example), ask about it, and keep the '
                    'conversation going; each new image joins the conversation with its question.')
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                takes_images = worker.chat_model.image_processor is not None
                # image_mode=None: Gradio passes the file on as uploaded, without decoding it first.
                image = gr.Image(type='filepath', image_mode=None, label='Image', sources=['upload', 'clipboard'],
                                 height=280, elem_id='image', visible=takes_images)
                if examples and takes_images:
                    gr.Examples([[path] for path in examples], inputs=[image], label='Example images',
                                examples_per_page=12)
                with gr.Accordion('Generation settings', open=False):
                    max_new_tokens = gr.Slider(1, 2048, value=512, step=1, label='Max new tokens',
                                               elem_id='max-new-tokens')
                    temperature = gr.Slider(0, 2, value=0.1, step=0.05, label='Temperature (0 = greedy)',
                                            elem_id='temperature')
                    top_p = gr.Slider(0.05, 1, value=0.75, step=0.05, label='Top-p', elem_id='top-p')
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label='Chat', height=480, elem_id='chatbot', render_markdown=False)
                question = gr.Textbox(label='Question', placeholder='Ask about the image, then press Enter',
                                      elem_id='question')
                with gr.Row():
                    send = gr.Button('Send', variant='primary', elem_id='send')
                    clear = gr.Button('Clear history', elem_id='clear')
        inputs = [question, image, turns, max_new_tokens, temperature, top_p]
        outputs = [chatbot, turns, question, image, send]
        send.click(respond, inputs, outputs)
        question.submit(respond, inputs, outputs)
        clear.click(lambda: ([], [], '', None, gr.skip()), None, outputs, queue=False)
    return demo
