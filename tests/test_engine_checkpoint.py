"""Checkpoint files: safe loading (allow-list, clear refusal) and crash-safe saving."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_toy import write_toy_config
from mmllava.checkpoints import load_checkpoint_file, safe_torch_load
from mmllava.cli import main
from mmllava.errors import MMLLaVAError


class _Payload:
    """Unpickling this would run ``print`` (any callable could stand there)."""

    def __reduce__(self):
        return print, ('payload executed',)


def test_safe_load_refuses_arbitrary_pickled_object(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'extra': _Payload()}, path)
    with pytest.raises(MMLLaVAError, match=r'refusing to load: .*builtins\.print'):
        safe_torch_load(path)
    assert 'payload executed' not in capsys.readouterr().out


def test_safe_load_rebuilds_message_hub_state(tmp_path):
    from mmengine.logging import HistoryBuffer, MessageHub

    hub = MessageHub.get_instance('test_safe_load_rebuilds_message_hub_state')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_info('iter', np.int64(3))
    path = tmp_path / 'iter_1.pth'
    torch.save({'message_hub': hub.state_dict(), 'state_dict': {'w': torch.ones(2)}}, path)

    loaded = safe_torch_load(path)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.mean() == 1.0 and buffer.current() == 0.5
    assert loaded['message_hub']['runtime_info']['iter'] == 3
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))


def test_crash_while_saving_keeps_last_checkpoint_loadable(tmp_path, monkeypatch):
    """The second save dies half-way through writing: ``last_checkpoint`` still names iter_4,
    which loads, even with ``save_total_limit=1`` (mmengine deletes the old one first)."""
    from mmengine.fileio import LocalBackend

    config = write_toy_config(tmp_path / 'cfg', save_steps=4, save_total_limit=1)
    work_dir = tmp_path / 'work'
    real_put, calls = LocalBackend.put, []

    def crashing_put(self, obj, filepath):
        calls.append(filepath)
        if len(calls) < 2:
            return real_put(self, obj, filepath)
        with open(filepath, 'wb') as f:  # a torn write, then the process "dies"
            f.write(obj[:len(obj) // 2])
        raise OSError('simulated crash during torch.save')

    monkeypatch.setattr(LocalBackend, 'put', crashing_put)
    with pytest.raises(OSError, match='simulated crash'):
        main(['train', str(config), '--work-dir', str(work_dir), '--seed', '0'])

    last = (work_dir / 'last_checkpoint').read_text()
    assert last == str(work_dir / 'iter_4.pth')
    assert load_checkpoint_file(last)['meta']['iter'] == 4
    assert not (work_dir / 'iter_8.pth').exists()
    with pytest.raises(MMLLaVAError, match='not a readable checkpoint'):  # the torn temporary file
        safe_torch_load(work_dir / '.iter_8.pth.tmp')

    monkeypatch.setattr(LocalBackend, 'put', real_put)
    assert main(['train', str(config), '--work-dir', str(work_dir), '--resume']) == 0
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_12.pth')
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_12.pth']
    assert not list(work_dir.glob('.*.tmp'))
