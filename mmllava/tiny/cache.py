"""The embedded default's files, built on first use into a cache folder, so the tiny configs run
from any folder after a plain ``pip install`` (the synthetic data committed under ``data/`` is not
part of the installed package).

Where: ``$MMLLAVA_CACHE`` or ``$XDG_CACHE_HOME/mmllava`` (default ``~/.cache/mmllava``):
``tiny_models-<version>/<name>`` (``mmllava.tiny.zoo``, seed 0) and ``synthetic-<version>``
(``mmllava.tiny.synthetic``, seed 0), where ``<version>`` is a digest of the builders' source (and of
transformers' version, which writes part of the model files): a folder built by another mmllava is
never taken for this one's. ``$MMLLAVA_TINY_ZOO`` names a prebuilt zoo to use for the models instead (tests share one).
Both builders are deterministic, so a folder built once is the folder any later build would write.
Builds go to a temporary sibling that is renamed into place: processes building at once (the ranks
of a ``torchrun``) never see a half-written folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from mmllava.errors import MMLLaVAError
from mmllava.tiny.synthetic import build_synthetic_data
from mmllava.tiny.zoo import BUILDERS, ZOO_NAMES, build_tiny_zoo, is_built

# A folder holding this file is complete (written last, after everything else of the build).
_COMPLETE = '.complete'


def cache_root() -> Path:
    """The folder the embedded default's files are built into (see module doc)."""
    if os.environ.get('MMLLAVA_CACHE'):
        return Path(os.environ['MMLLAVA_CACHE']).expanduser().resolve()
    xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(xdg).resolve() / 'mmllava'


def _version(*sources: str) -> str:
    """A short digest of the named files of ``mmllava.tiny`` (every ``*.py`` of a named folder) and
    of the installed transformers' version: the identity of what the builders write."""
    here = Path(__file__).parent
    digest = hashlib.sha256(version('transformers').encode())
    for source in sources:
        for path in sorted((here / source).glob('*.py')) if (here / source).is_dir() else [here / source]:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _complete(folder: Path) -> bool:
    return (folder / _COMPLETE).exists()


def _built(folder: Path, build, done=_complete) -> Path:
    """``folder``, unless ``done(folder)`` says it is whole already: ``build(tmp)`` writes into a
    temporary sibling and returns the folder it wrote, which is renamed to ``folder``."""
    if done(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        written = build(tmp)
        (written / _COMPLETE).touch()
        os.chmod(written, 0o755)  # mkdtemp made it private; the data is for every user of the cache
        if folder.exists() and not done(folder):  # an interrupted build: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(written, folder)
        except OSError:
            if not done(folder):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_model_path(name: str) -> Path:
    """The tiny model ``name`` (one of ``mmllava.tiny.zoo.ZOO_NAMES``), built if missing."""
    if name not in BUILDERS:
        raise MMLLaVAError(f'no tiny model named {name!r}; known: {", ".join(BUILDERS)}')
    zoo = os.environ.get('MMLLAVA_TINY_ZOO')
    root = (Path(zoo).expanduser().resolve() if zoo else
            cache_root() / f'tiny_models-{_version("zoo.py", "tokenizers.py", "vocabulary.py", "remote_code")}')

    # A prebuilt zoo (tools/make_tiny_zoo.py) has no .complete file: is_built checks its files.
    return _built(root / name, lambda tmp: build_tiny_zoo(tmp, names=[name])[name], done=is_built)


def synthetic_data_path() -> Path:
    """The synthetic shapes data (``pretrain.json``, ``finetune.json``, ``eval.json``, ``images/``),
    built if missing."""
    def build(tmp: Path) -> Path:
        build_synthetic_data(tmp)
        return tmp

    return _built(cache_root() / f'synthetic-{_version("synthetic.py")}', build)


def main(argv: list[str] | None = None) -> int:
    """``python -m mmllava.tiny.cache [NAME ...]``: build what is missing and print ``NAME<TAB>PATH``
    per line; NAME is a tiny model or ``synthetic`` (default: the synthetic data and every model)."""
    for name in (sys.argv[1:] if argv is None else argv) or ['synthetic', *ZOO_NAMES]:
        path = synthetic_data_path() if name == 'synthetic' else tiny_model_path(name)
        print(f'{name}\t{path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
