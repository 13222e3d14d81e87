"""One generation at a time per model: a worker thread owns the model and takes requests from a
bounded queue; callers stream the answer from an asyncio event loop.

Why one thread: a model is not safe to run from several threads at once, and ``seed`` re-seeds
torch's global RNG, so requests must not interleave. The web frameworks (Gradio, FastAPI) call
handlers on an event loop; the model never runs on that loop and never creates one, so several
images or turns cannot trip over a loop bound to another thread (the ``Current event loop is
different from the one bound to loop task`` error users of other demos hit). Pieces of the answer
cross from the worker thread to the loop with ``call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from mmllava.chat.loader import ChatModel
from mmllava.chat.session import ChatSession, GenerationSettings, Usage
from mmllava.errors import MMLLaVAError

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full: the request was refused, not queued."""


class Cancelled(Exception):
    """The caller went away; the generation was stopped."""


@dataclass
class Exchange:
    """A past turn: the user's ``text`` with its PIL ``images`` and the model's ``answer``."""

    text: str
    answer: str
    images: list = field(default_factory=list)


@dataclass
class ChatRequest:
    """Everything one answer depends on; requests are stateless, the caller keeps the history."""

    text: str
    images: list = field(default_factory=list)
    history: list[Exchange] = field(default_factory=list)
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    seed: int | None = None


@dataclass
class Answer:
    """The final answer of a request and its token counts."""

    text: str
    usage: Usage


class Job:
    """A queued request; ``sink`` receives, from the worker thread, each piece of text, then the
    :class:`Answer` or the exception that ended it."""

    def __init__(self, request: ChatRequest, sink: Callable[[Any], None]):
        self.request = request
        self.sink = sink
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating (at the next piece of text) or skip the job if it has not started."""
        self.cancelled.set()


class GenerationWorker:
    """Runs :class:`ChatRequest` s on ``chat_model`` one at a time, in a daemon thread.

    At most ``max_queue`` requests wait behind the running one; :meth:`submit` refuses more with
    :class:`Busy` at once, so a flood of requests is answered quickly instead of piling up.
    """

    def __init__(self, chat_model: ChatModel, max_queue: int = 8):
        if max_queue < 1:
            raise MMLLaVAError(f'--max-queue must be >= 1, got {max_queue}')
        self.chat_model = chat_model
        self.max_queue = max_queue
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._running = False
        self._thread = threading.Thread(target=self._loop, name='mmllava-generation', daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is still taking requests."""
        return self._thread.is_alive()

    def load(self) -> dict:
        """``{'running': 0 or 1, 'waiting': N, 'max_queue': M}`` for health checks."""
        return {'running': int(self._running), 'waiting': self._queue.qsize(), 'max_queue': self.max_queue}

    def submit(self, request: ChatRequest, sink: Callable[[Any], None]) -> Job:
        """Queue ``request``; raises :class:`Busy` when ``max_queue`` requests already wait."""
        job = Job(request, sink)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(f'the model is busy: {self.max_queue} requests are already waiting '
                       f'(--max-queue {self.max_queue}); retry later') from None
        return job

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job.cancelled.is_set():
                continue
            self._running = True
            try:
                result = self._generate(job)
            except Exception as e:  # the worker outlives any failed request; the caller gets the error
                if not isinstance(e, (MMLLaVAError, Cancelled)):
                    log.exception('generation failed')
                result = e
            finally:
                self._running = False
            job.sink(result)

    def _generate(self, job: Job) -> Answer:
        request = job.request
        session = ChatSession(self.chat_model, system=request.system, settings=request.settings, seed=request.seed)
        for past in request.history:
            session.remember(past.text, past.answer, past.images or None)

        def emit(piece: str) -> None:
            # Raising inside the streamer's callback stops ``generate`` at this step.
            if job.cancelled.is_set():
                raise Cancelled('the request was cancelled')
            job.sink(piece)

        text = session.ask(request.text, request.images or None, stream_callback=emit)
        return Answer(text, session.usage)


def stream(worker: GenerationWorker, request: ChatRequest) -> AsyncIterator:
    """Submit ``request`` (raising :class:`Busy` now if the queue is full) and return an async
    iterator of the answer's pieces of text followed by the :class:`Answer`; a failed generation
    raises its exception. Leaving the iteration early (a client that hung up) cancels the job.
    Call from a running event loop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def sink(event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            pass

    return _events(worker.submit(request, sink), events)


async def _events(job: Job, events: asyncio.Queue) -> AsyncIterator:
    try:
        while True:
            event = await events.get()
            if isinstance(event, Exception):
                raise event
            yield event
            if isinstance(event, Answer):
                return
    finally:
        job.cancel()
