"""Process launching: XTuner's NPROC_PER_NODE/NNODES convention -> torchrun; slurm variables."""
from __future__ import annotations

import sys

from mmllava.engine.launch import single_process_env, slurm_env, torchrun_command


def test_nproc_per_node_relaunches_under_torchrun(monkeypatch):
    for name in ('NNODES', 'NODE_RANK', 'ADDR', 'TORCHELASTIC_RUN_ID'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('NPROC_PER_NODE', '2')
    monkeypatch.setenv('PORT', '29555')
    command = torchrun_command(['cfg.py', '--deepspeed', 'zero2'])
    assert command == [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--nnodes=1',
                       '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29555', '-m', 'mmllava.cli',
                       'train', 'cfg.py', '--deepspeed', 'zero2', '--launcher', 'pytorch']


def test_multi_node_and_single_process(monkeypatch):
    monkeypatch.delenv('TORCHELASTIC_RUN_ID', raising=False)
    monkeypatch.delenv('PORT', raising=False)
    monkeypatch.setenv('NPROC_PER_NODE', '1')
    monkeypatch.setenv('NNODES', '2')
    monkeypatch.setenv('NODE_RANK', '1')
    monkeypatch.setenv('ADDR', '10.0.0.1')
    command = torchrun_command(['cfg.py'])
    assert '--nnodes=2' in command and '--node_rank=1' in command and '--master_addr=10.0.0.1' in command
    assert '--master_port=29500' in command  # nodes must agree on a port: no random one
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'x')  # already a torchrun worker
    assert torchrun_command(['cfg.py']) is None
    monkeypatch.delenv('TORCHELASTIC_RUN_ID')
    monkeypatch.setenv('NNODES', '1')
    assert torchrun_command(['cfg.py']) is None


def test_launcher_variables(monkeypatch):
    for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    env = single_process_env()
    assert env['RANK'] == env['LOCAL_RANK'] == '0' and env['WORLD_SIZE'] == '1' and int(env['MASTER_PORT']) > 0

    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '8')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node[1-2]')
    monkeypatch.setenv('MASTER_ADDR', 'node1')
    assert slurm_env(port=29999) == {'RANK': '3', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'node1',
                                     'MASTER_PORT': '29999'}
