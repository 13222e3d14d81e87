"""Chatting with a model folder: ``load_chat_model`` (any supported layout -> ``ChatModel``) and
``ChatSession`` (multi-turn generation with streaming and stop words). Used by ``mmllava chat``
and meant for reuse by a web demo or an API server; import the submodules you need."""
