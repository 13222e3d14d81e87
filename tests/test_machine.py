"""Machine facts: the CPU model and ISA features, library versions and threads, in the training log
and in ``mmllava bench``; read the same way bitsandbytes and torch read them."""
from __future__ import annotations

import torch
from engine_toy import write_toy_config

from mmllava.cli import main
from mmllava.engine.machine import format_machine_facts, machine_facts, parse_cpuinfo

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512vl
processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512vl
"""
SAPPHIRE_RAPIDS_FLAGS = 'avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8'


def test_cpuinfo_parsing(tmp_path):
    assert parse_cpuinfo(EPYC) == ('AMD EPYC 9654 96-Core Processor',
                                   {'fpu', 'sse2', 'avx', 'avx2', 'avx512f', 'avx512bw', 'avx512_bf16', 'avx512vl'})
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('model name\t: Intel Xeon\nflags\t: sse2 avx avx2 fma\n')
    facts = machine_facts(str(cpuinfo))
    assert facts['cpu'] == 'Intel Xeon'
    assert facts['isa'] == {'AVX2': True, 'AVX-512': False, 'AVX512-BF16': False, 'AMX': False}
    cpuinfo.write_text(f'model name\t: Intel Xeon Platinum 8480+\nflags\t: {SAPPHIRE_RAPIDS_FLAGS}\n')
    assert set(machine_facts(str(cpuinfo))['isa'].values()) == {True}
    unreadable = machine_facts(str(tmp_path / 'missing'))  # not Linux: unknown, not "no"
    assert unreadable['isa'] == dict.fromkeys(['AVX2', 'AVX-512', 'AVX512-BF16', 'AMX'])


def test_facts_of_this_machine_agree_with_torch_and_bitsandbytes():
    import bitsandbytes
    import transformers
    from bitsandbytes.functional import has_avx512bf16

    facts = machine_facts()
    assert facts['versions']['torch'] == torch.__version__
    assert facts['versions']['transformers'] == transformers.__version__
    assert facts['versions']['bitsandbytes'] == bitsandbytes.__version__
    assert facts['torch_threads'] == torch.get_num_threads()
    assert facts['torch_cpu_capability'] == torch.backends.cpu.get_cpu_capability()
    # the feature that decides bitsandbytes' 4-bit CPU path, as bitsandbytes itself detects it
    assert facts['isa']['AVX512-BF16'] == bool(has_avx512bf16())
    if facts['isa']['AVX-512']:
        assert facts['isa']['AVX2']  # every AVX-512 CPU has AVX2


def test_one_line_format():
    facts = {'cpu': 'AMD EPYC', 'isa': {'AVX2': True, 'AVX-512': True, 'AVX512-BF16': True, 'AMX': False},
             'torch_cpu_capability': 'AVX512',
             'versions': {'torch': '2.13.0+cpu', 'transformers': '5.24.0', 'bitsandbytes': '0.50.2', 'deepspeed': None},
             'torch_threads': 2, 'cpu_count': 2, 'cuda': None}
    assert format_machine_facts(facts) == (
        'machine: AMD EPYC; AVX2 yes, AVX-512 yes, AVX512-BF16 yes, AMX no; torch 2.13.0+cpu (CPU kernels AVX512), '
        'transformers 5.24.0, bitsandbytes 0.50.2, deepspeed not installed; 2 torch threads on 2 CPUs')


def test_training_log_records_the_machine(tmp_path):
    config = write_toy_config(tmp_path / 'cfg', num_samples=8, max_epochs=1)
    work_dir = tmp_path / 'work'
    assert main(['train', str(config), '--work-dir', str(work_dir)]) == 0
    log = next(work_dir.glob('*/*.log')).read_text()
    assert format_machine_facts(machine_facts()) in log
