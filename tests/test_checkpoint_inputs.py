"""Every entry point that takes a training checkpoint accepts the same inputs, and refuses a bad one
with one line: ``pretrained_pth``, ``load_from`` (plain runner and DeepSpeed), ``train --resume PATH``,
``convert pth_to_hf`` and ``eval --checkpoint`` x a ``.pth`` file, a DeepSpeed ``iter_N.pth/``
folder, one that nests its files in ``checkpoint/``, that ``checkpoint/`` subfolder, and a work dir.

The checkpoint holds the tiny LLaVA pretrain config's trained weights (its projector), perturbed, so
"accepted" is checked as "the model now holds exactly these weights" (loading copies tensors:
exact equality)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from llava_checkpoints import PRETRAIN, cfg_options, make_checkpoint
from mmllava.checkpoints import resolve_checkpoint
from mmllava.errors import MMLLaVAError

FORMS = ['pth_file', 'deepspeed_folder', 'deepspeed_nested_folder', 'deepspeed_checkpoint_subfolder',
         'work_dir', 'deepspeed_work_dir']
BAD_FORMS = ['missing', 'empty_folder', 'deepspeed_inner_file', 'dangling_work_dir']


@pytest.fixture(scope='module')
def trained(tiny_zoo, tmp_path_factory):
    """``(weights, {form: path})``: one set of weights written in each accepted form."""
    root = tmp_path_factory.mktemp('checkpoint_forms')
    state = make_checkpoint(tiny_zoo, root / 'pth' / 'iter_5.pth', config=PRETRAIN).state_dict()
    assert state and all(key.startswith('projector.') for key in state)
    forms = {'pth_file': root / 'pth' / 'iter_5.pth'}
    flat = root / 'ds' / 'iter_5.pth'  # mmengine + DeepSpeed: iter_N.pth/mp_rank_00_model_states.pt
    flat.mkdir(parents=True)
    torch.save({'module': state}, flat / 'mp_rank_00_model_states.pt')
    forms['deepspeed_folder'] = flat
    nested = root / 'ds_nested' / 'iter_5.pth'
    (nested / 'checkpoint').mkdir(parents=True)
    torch.save({'module': state}, nested / 'checkpoint' / 'mp_rank_00_model_states.pt')
    forms['deepspeed_nested_folder'] = nested
    forms['deepspeed_checkpoint_subfolder'] = nested / 'checkpoint'
    (root / 'pth' / 'last_checkpoint').write_text(str(forms['pth_file']))
    forms['work_dir'] = root / 'pth'
    (root / 'ds' / 'last_checkpoint').write_text(str(flat))
    forms['deepspeed_work_dir'] = root / 'ds'
    return state, forms


@pytest.fixture(scope='module')
def bad_forms(tmp_path_factory):
    """``{form: (path, the resolver's one-line reason)}``."""
    root = tmp_path_factory.mktemp('bad_forms')
    (root / 'empty').mkdir()
    inner = root / 'iter_7.pth' / 'mp_rank_00_model_states.pt'
    inner.parent.mkdir()
    torch.save({'module': {}}, inner)
    (root / 'moved').mkdir()
    (root / 'moved' / 'last_checkpoint').write_text('/elsewhere/iter_3.pth')
    return {
        'missing': (root / 'iter_9.pth', f'checkpoint not found: {root / "iter_9.pth"}'),
        'empty_folder': (root / 'empty', f'{root / "empty"}: a folder, but not a checkpoint: no '
                         'mp_rank_00_model_states.pt (a DeepSpeed iter_N.pth folder) and no last_checkpoint '
                         '(a work dir that saved one)'),
        'deepspeed_inner_file': (inner, f'{inner} is one file of a DeepSpeed checkpoint; pass the checkpoint '
                                 f'folder that holds it instead: {root / "iter_7.pth"}'),
        'dangling_work_dir': (root / 'moved', f'{root / "moved" / "last_checkpoint"} names /elsewhere/iter_3.pth, '
                              f'which does not exist (nor does {root / "moved" / "iter_3.pth"})'),
    }


@pytest.fixture(scope='module')
def model(tiny_zoo):
    """The pretrain config's model, its projector zeroed between loads."""
    from mmllava.config import build, load_config, parse_cfg_options

    cfg = load_config(PRETRAIN, parse_cfg_options(cfg_options(tiny_zoo)))
    cfg.model.pretrained_pth = None
    return build(cfg.model)


def _holds(model, state) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[key], value) for key, value in state.items())


def _zeroed(model):
    with torch.no_grad():
        for p in model.projector.parameters():
            p.zero_()
    return model


# --- the entry points, each as the command runs it ----------------------------------------------
def _pretrained_pth(model, path, tiny_zoo):
    _zeroed(model).load_pretrained(str(path))  # what LLaVAModel(pretrained_pth=...) calls
    return model


def _load_from(model, path, tiny_zoo):
    """mmengine's ``Runner.load_checkpoint`` (``load_from``, and resume's weights) with mmllava's loader."""
    from mmengine.runner import Runner

    from mmllava.engine import compat

    compat.apply()
    runner = SimpleNamespace(model=_zeroed(model), call_hook=lambda *args, **kwargs: None,
                             logger=logging.getLogger('test'), _has_loaded=False)
    Runner.load_checkpoint(runner, str(path))
    return model


def _deepspeed_load_from(model, path, tiny_zoo):
    """``DeepSpeedStrategy.load_checkpoint``; the DeepSpeed engine is a stand-in that loads the
    folder DeepSpeed would read (``dirname/tag``), so the test needs no distributed setup."""
    from mmllava.checkpoints import load_checkpoint_file
    from mmllava.engine.deepspeed import DeepSpeedStrategy

    def engine_load(dirname, tag, **kwargs):
        states = load_checkpoint_file(Path(dirname) / tag)['state_dict']
        model.load_state_dict(states, strict=False)
        return None, {}

    strategy = object.__new__(DeepSpeedStrategy)
    strategy.model = SimpleNamespace(module=_zeroed(model), load_checkpoint=engine_load)
    strategy.logger, strategy.exclude_frozen_parameters = logging.getLogger('test'), True
    DeepSpeedStrategy.load_checkpoint(strategy, str(path))
    return model


def _convert(model, path, tiny_zoo):
    from mmllava.convert.pth_to_hf import load_trained_model

    return load_trained_model(PRETRAIN, path, _options(tiny_zoo))[0]


def _eval(model, path, tiny_zoo):
    from mmllava.commands.eval import _checkpoint_chat_model

    args = SimpleNamespace(model=PRETRAIN, checkpoint=str(path), cfg_options=cfg_options(tiny_zoo),
                           prompt_template=None)
    return _checkpoint_chat_model(args).model


def _options(tiny_zoo) -> dict:
    from mmllava.config import parse_cfg_options

    return parse_cfg_options(cfg_options(tiny_zoo))


ENTRY_POINTS = {'pretrained_pth': _pretrained_pth, 'load_from': _load_from,
                'deepspeed_load_from': _deepspeed_load_from, 'convert_pth_to_hf': _convert,
                'eval_checkpoint': _eval}


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_entry_point_accepts_every_form(entry, form, trained, model, tiny_zoo):
    state, forms = trained
    loaded = ENTRY_POINTS[entry](model, forms[form], tiny_zoo)
    assert _holds(loaded, state)


@pytest.mark.parametrize('bad', BAD_FORMS)
@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_entry_point_refuses_a_bad_input_in_one_line(entry, bad, bad_forms, model, tiny_zoo):
    path, reason = bad_forms[bad]
    with pytest.raises(MMLLaVAError) as error:
        ENTRY_POINTS[entry](model, path, tiny_zoo)
    message = str(error.value)
    assert '\n' not in message
    # the setting may come first (``load_from: ``): the reason is the resolver's, whichever entry
    assert message == reason or message.endswith(': ' + reason)


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('deepspeed', [False, True])
def test_resume_accepts_every_form_written_the_same_way(form, deepspeed, trained, tmp_path):
    """``train --resume PATH``: the checkpoint it resumes is the resolved one; a checkpoint written
    with(out) DeepSpeed resumed without (with) it is refused in one line (its optimizer state would
    be skipped)."""
    from mmllava.engine.runner import _resolve_resume

    path = trained[1][form]
    resolved = resolve_checkpoint(path)
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))
    if resolved.is_dir() == deepspeed:
        _resolve_resume(cfg, str(path), deepspeed=deepspeed)
        assert (cfg.resume, cfg.load_from) == (True, str(resolved))
        assert (resolved / 'mp_rank_00_model_states.pt').is_file() if deepspeed else resolved.suffix == '.pth'
    else:
        with pytest.raises(MMLLaVAError) as error:
            _resolve_resume(cfg, str(path), deepspeed=deepspeed)
        written = 'with' if resolved.is_dir() else 'without'
        assert str(error.value).startswith(f'resume: {resolved} was written {written} --deepspeed; '
                                           f'resume it {written} --deepspeed')


@pytest.mark.parametrize('bad', BAD_FORMS)
def test_resume_refuses_a_bad_input_in_one_line(bad, bad_forms, tmp_path):
    from mmllava.engine.runner import _resolve_resume

    path, reason = bad_forms[bad]
    with pytest.raises(MMLLaVAError) as error:
        _resolve_resume(Config(dict(work_dir=str(tmp_path))), str(path), deepspeed=False)
    assert str(error.value) == f'resume: {reason}'


def test_train_resume_takes_a_work_dir_path(tmp_path):
    """``mmllava train --resume WORK_DIR`` end to end: the run continues from the work dir's last
    checkpoint (iteration 4 of a run that crashed at 7), as ``--resume iter_4.pth`` would."""
    from engine_toy import read_losses, write_toy_config
    from mmllava.cli import main

    config = write_toy_config(tmp_path / 'cfg', save_steps=4)
    work_dir = tmp_path / 'work'
    with pytest.raises(RuntimeError, match='simulated crash'):
        main(['train', str(config), '--work-dir', str(work_dir), '--seed', '3', '--cfg-options', 'crash_at=7'])
    assert main(['train', str(config), '--work-dir', str(work_dir), '--resume', str(work_dir)]) == 0
    steps = [int(step) for step, _ in read_losses(work_dir)]
    assert steps == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8, 9, 10, 11, 12]
