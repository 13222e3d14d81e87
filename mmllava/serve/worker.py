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
import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from mmllava.chat.loader import ChatModel
from mmllava.chat.session import ChatSession, GenerationSettings, Usage
from mmllava.errors import MMLLaVAError
from mmllava.serve.cancel import cancellation_points

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full: the request was refused, not queued."""


class Cancelled(Exception):
    """The caller went away; the generation was stopped."""


class ShuttingDown(Busy):
    """The server is stopping: the request was refused, or stopped where it was."""


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

    def __init__(self, request: ChatRequest, sink: Callable[[Any], None], leave_queue: Callable[['Job'], None]):
        self.request = request
        self.sink = sink
        self.cancelled = threading.Event()
        self.error: Exception | None = None
        self._leave_queue = leave_queue

    def cancel(self, error: Exception | None = None) -> None:
        """Leave the queue at once if waiting, else stop generating at the next layer or piece of
        text; ``error`` (default :class:`Cancelled`) is what the generation then ends with."""
        self.error = self.error or error
        self.cancelled.set()
        self._leave_queue(self)


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
        # A deque, not a queue.Queue: a cancelled job leaves it at once and frees its slot.
        self._waiting: collections.deque[Job] = collections.deque()
        self._changed = threading.Condition()
        self._running: Job | None = None
        self._closed: ShuttingDown | None = None
        self._thread = threading.Thread(target=self._loop, name='mmllava-generation', daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is still taking requests."""
        return self._thread.is_alive()

    def load(self) -> dict:
        """``{'running': 0 or 1, 'waiting': N, 'max_queue': M}`` for health checks."""
        with self._changed:
            return {'running': int(self._running is not None), 'waiting': len(self._waiting),
                    'max_queue': self.max_queue}

    def check_room(self) -> None:
        """Raise :class:`Busy` now if :meth:`submit` would (so a request is refused before costly work)."""
        with self._changed:
            self._refuse_if_full()

    def _refuse_if_full(self) -> None:
        if self._closed is not None:
            raise self._closed
        if len(self._waiting) >= self.max_queue:
            raise Busy(f'the model is busy: {self.max_queue} requests are already waiting '
                       f'(--max-queue {self.max_queue}); retry later')

    def submit(self, request: ChatRequest, sink: Callable[[Any], None]) -> Job:
        """Queue ``request``; raises :class:`Busy` when ``max_queue`` requests already wait."""
        job = Job(request, sink, self._leave_queue)
        with self._changed:
            self._refuse_if_full()
            self._waiting.append(job)
            self._changed.notify_all()
        return job

    def _leave_queue(self, job: Job) -> None:
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                self._changed.notify_all()

    def close(self, reason: str = 'the server is shutting down') -> None:
        """Refuse new requests, fail the waiting ones and stop the running one at its next layer, all
        with :class:`ShuttingDown`; the worker thread then ends."""
        error = ShuttingDown(reason)
        with self._changed:
            self._closed = error
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = self._running
            self._changed.notify_all()
        for job in waiting:
            job.cancel(error)
            job.sink(error)
        if running is not None:
            running.cancel(error)

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and self._closed is None:
                    self._changed.wait()
                if self._closed is not None:
                    return
                job = self._running = self._waiting.popleft()
                self._changed.notify_all()
            try:
                if job.cancelled.is_set():  # cancelled between leaving the queue and starting
                    raise Cancelled('cancelled')
                with cancellation_points(self.chat_model.model, job.cancelled, lambda: Cancelled('cancelled')):
                    result = self._generate(job)
            except Exception as e:  # the worker outlives any failed request; the caller gets the error
                if not isinstance(e, (MMLLaVAError, Cancelled)):
                    log.exception('generation failed')
                result = job.error if isinstance(e, Cancelled) and job.error is not None else e
            finally:
                with self._changed:
                    self._running = None
                    self._changed.notify_all()
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
