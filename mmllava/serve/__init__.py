"""Serving a chat model over HTTP: ``worker`` (one generation at a time, bounded queue), ``messages``
(OpenAI request parsing and validation), ``api`` (the OpenAI-compatible server of ``mmllava serve``)
and ``demo`` (the Gradio page of ``mmllava demo``). Loading and generation are ``mmllava.chat``'s,
the same code path as ``mmllava chat``. Import the submodules you need."""
