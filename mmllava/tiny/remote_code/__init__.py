"""Our own small remote-code files for the tiny zoo's official InternVL2 folder.

A real InternVL2 folder ships the ``*.py`` files its ``auto_map`` names (``trust_remote_code``); the
tiny zoo has no such files to copy, so it writes these: the same module and class names, the same
interfaces (``InternVLChatConfig``, ``InternVLChatModel.forward/generate/chat``, ``InternLM2Config``,
``InternLM2ForCausalLM``, ``InternLM2Tokenizer(Fast)``) and the same weight names, written from the
published architecture (no code copied). Each module imports only transformers, torch and its
siblings (relative imports, as remote code must), and runs in transformers 4.52 and 5.x.
"""
from pathlib import Path

FILES = tuple(sorted(p.name for p in Path(__file__).parent.glob('*.py') if p.name != '__init__.py'))


def write_remote_code(folder) -> None:
    """Copy the remote-code files into ``folder``."""
    for name in FILES:
        (Path(folder) / name).write_bytes((Path(__file__).parent / name).read_bytes())
