"""``mmllava bench`` on the tiny LLaVA config: the runner and the bare loop both run, every field is reported."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tolerances import rounding_tolerance

from mmllava.bench.comparison import FIELDS, spread, trust_warnings
from mmllava.cli import main
from mmllava.engine.machine import format_machine_facts, machine_facts

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'llava_tiny_internlm2_chat_clip_pretrain'


def _options(tiny_zoo) -> list[str]:
    return [f'llm_name_or_path={tiny_zoo["internlm2_chat"]}', f'visual_encoder_name_or_path={tiny_zoo["clip_vit"]}',
            f'data_root={REPO / "data" / "synthetic"}/']


def _linear_weights(folder: Path, part: str = '') -> int:
    """Parameters of the 2-D weights (matrices) in a model folder whose names contain ``part``."""
    from safetensors import safe_open

    with safe_open(folder / 'model.safetensors', 'pt') as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys() if part in k]
    return sum(rows * cols for rows, cols in (s for s in shapes if len(s) == 2))


def test_bench_reports_every_field(tiny_zoo, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', CONFIG, '--steps', '3', '--warmup', '1', '--json', str(out),
                 '--cfg-options', *_options(tiny_zoo)]) == 0
    result = json.loads(out.read_text())
    expected = {key for key, _, _ in FIELDS if key not in ('cuda_max_allocated_mb', 'hfu')}
    for loop in ('framework', 'reference'):
        assert expected <= result[loop].keys(), loop
        assert result[loop]['steps'] == 3
        assert result[loop]['real_tokens_per_sec'] > 0 and result[loop]['cpu_rss_mb'] > 0
        assert 0 <= result[loop]['padding_fraction'] < 1 and 0 <= result[loop]['data_wait_fraction'] < 1
    # identical batches in both loops
    assert result['framework']['real_tokens_per_step'] == result['reference']['real_tokens_per_step']
    assert result['overhead']['sec_per_step_ratio'] > 0 and len(result['overhead']['paired_ratios']) == 1
    ratio = result['overhead']['paired_ratios'][0]
    assert result['overhead']['paired_ratio_spread'] == {'min': ratio, 'median': ratio, 'max': ratio}
    assert result['load_average_1min'].keys() == {'before', 'after'}
    # same model, batches, optimizer and lr schedule: the bare loop trains exactly as the runner
    assert len(result['framework']['losses']) == 4
    assert result['framework']['losses'] == result['reference']['losses']
    assert result['loss_max_abs_diff'] == 0.0
    table = capsys.readouterr().out
    assert 'framework / bare loop' in table and 'real tok/s' in table
    assert 'losses of the two loops: largest difference 0.00e+00 over 4 steps' in table
    # the machine it ran on, so a number is matched to the kind of CPU that gave it
    assert result['machine'] == machine_facts() and format_machine_facts(result['machine']) in table
    # the warnings are the ones its own figures call for, and the table prints them
    assert result['warnings'] == trust_warnings(result)
    assert [line for line in table.splitlines() if line.startswith('warning: ')] == \
        [f'warning: {warning}' for warning in result['warnings']]
    # FLOPs counted in the first warm-up step of each loop, per real token: the same in both, and
    # at least a forward and an input-gradient pass (4 FLOPs per weight) through every LLM layer
    # (the projector trains, below the LLM), at most 12 per weight of the LLM, CLIP and projector
    flops = result['framework']['flops_per_real_token']
    assert flops == result['reference']['flops_per_real_token']
    llm = _linear_weights(Path(tiny_zoo['internlm2_chat']), 'layers.')
    everything = _linear_weights(Path(tiny_zoo['internlm2_chat'])) + _linear_weights(Path(tiny_zoo['clip_vit']))
    assert 4 * llm < flops < 12 * everything
    assert result['framework']['tflops_per_sec'] > 0 and 'hfu' not in result['framework']  # no known peak on CPU


def test_bench_under_deepspeed_trains_both_loops_alike(tiny_zoo, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', CONFIG, '--steps', '2', '--warmup', '1', '--deepspeed', 'zero2', '--json', str(out),
                 '--cfg-options', *_options(tiny_zoo)]) == 0
    result = json.loads(out.read_text())
    assert result['deepspeed'] == 'zero2'
    losses = result['framework']['losses']
    assert len(losses) == 3 and losses[-1] < losses[0]
    # Same kernels on this CPU; ZeRO-2 sums the gradient norm (clipping) of the projector's
    # 2 x (64 x 64 + 64) parameters in another order (flat buffer): one fp32 rounding of that sum
    # per step, scaling the update.
    for step, (got, expected) in enumerate(zip(result['reference']['losses'], losses)):
        assert got == pytest.approx(expected, abs=rounding_tolerance(torch.float32, 2 * (64 * 64 + 64), expected,
                                                                     sequential=step + 1))
    assert 'DeepSpeed zero2' in capsys.readouterr().out
    # the world of one is gone with its launcher variables and DeepSpeed's cached groups: DeepSpeed
    # runs again in this process (it failed with "Group ... is not registered" before)
    assert not torch.distributed.is_initialized() and 'MASTER_PORT' not in os.environ
    assert main(['bench', CONFIG, '--steps', '1', '--warmup', '0', '--deepspeed', 'zero2', '--no-reference',
                 '--cfg-options', *_options(tiny_zoo)]) == 0


def test_bench_packed_runner_only(tiny_zoo, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', CONFIG, '--steps', '2', '--warmup', '1', '--no-reference', '--json', str(out),
                 '--cfg-options', *_options(tiny_zoo), 'pack_to_max_length=True']) == 0
    result = json.loads(out.read_text())
    assert 'reference' not in result and 'overhead' not in result
    assert result['framework']['samples_per_step'] > 8  # packs of several samples, 8 rows a step


def _result(sec_per_step, paired_ratios, load_before, load_after, threads=1, cpus=2):
    """A bench result with the figures ``trust_warnings`` reads."""
    return {'framework': {'sec_per_step': sec_per_step}, 'torch_threads': threads, 'cpu_count': cpus,
            'load_average_1min': {'before': load_before, 'after': load_after},
            'overhead': {'paired_ratios': paired_ratios, 'paired_ratio_spread': spread(paired_ratios)}}


def test_ratio_spread_and_when_not_to_trust_it():
    # the tiny pretrain run of docs/benchmarks.md: 0.039 s steps, paired ratios 1.015, 0.995, 0.962
    tiny = _result(0.0389, [1.015, 0.995, 0.962], load_before=0.6, load_after=1.4)
    assert tiny['overhead']['paired_ratio_spread'] == {'min': 0.962, 'median': 0.995, 'max': 1.015}
    assert trust_warnings(tiny) == [
        'steps take 0.039 s, under 0.2 s: timer and scheduling noise move the ratio by percents; '
        'bench a bigger model or batch for the overhead',
        'paired ratios spread from 0.962 to 1.015, wider than 0.05: the overhead is not resolved; '
        'use longer steps, more --repeats or a quieter machine']
    # the 50M LLaVA: 4.155 s steps, one thread on two cores, idle machine -- nothing to warn about
    assert trust_warnings(_result(4.155, [1.035, 1.03], load_before=0.5, load_after=1.3)) == []
    # other load: 1.6 before the bench leaves one core for one torch thread... only 0.4 of it
    loaded = _result(4.155, [1.035, 1.03], load_before=1.6, load_after=2.1)
    assert trust_warnings(loaded) == [
        'machine loaded: 1-min load 1.6 before, 2.1 after, about 1.6 of it from other processes, beside 1 torch '
        'threads on 2 CPUs: the loops wait for cores and their times mean little']
    # load that came during the run: 3.2 after, less the bench's own thread, is 2.2 of others
    assert 'about 2.2 of it from other processes' in trust_warnings(
        _result(4.155, [1.035], load_before=0.2, load_after=3.2))[0]
    # two threads on two cores tolerate half a core of background load, not more
    assert trust_warnings(_result(0.3, [1.0], load_before=0.5, load_after=2.4, threads=2)) == []
    assert len(trust_warnings(_result(0.3, [1.0], load_before=0.7, load_after=2.4, threads=2))) == 1
    # runner only (--no-reference): no ratio, only the step and load checks
    runner_only = _result(0.1, [1.0], load_before=0.1, load_after=0.5)
    del runner_only['overhead']
    assert len(trust_warnings(runner_only)) == 1


def test_bench_rejects_bad_steps(capsys):
    assert main(['bench', CONFIG, '--steps', '0']) == 1
    assert '--steps must be at least 1' in capsys.readouterr().err


def test_real_size_models_have_the_real_parameter_counts(tiny_zoo):
    import math

    from mmllava.bench.real_size import REAL_SIZES, parameter_shapes, real_size_config

    counts = {}
    for name, (tiny_name, _) in REAL_SIZES.items():
        tiny_config = json.loads((Path(tiny_zoo[tiny_name]) / 'config.json').read_text())
        shapes = parameter_shapes(real_size_config(name, tiny_config))
        if name.startswith('clip'):  # LLaVA uses the vision tower
            shapes = {key: shape for key, shape in shapes.items() if key.startswith('vision_model.')}
        counts[name] = sum(math.prod(shape) for shape in shapes.values())
    assert counts['internlm2_chat_1_8b'] == 1_889_110_016  # InternLM2-chat-1.8B
    assert counts['llama3_8b_instruct'] == 8_030_261_248  # Meta-Llama-3-8B-Instruct
    assert counts['clip_vit_large_p14_336'] == 303_507_456  # CLIP ViT-L/14-336's vision tower


def test_a_real_size_folder_loads_in_its_format(tiny_zoo, tmp_path):
    """Built with one layer and a smaller vocabulary (seconds): bf16 safetensors, loadable, 576 patches."""
    from mmllava.bench.real_size import build_real_size
    from mmllava.pretrained import load_image_processor, load_llm, load_vision_encoder

    zoo = Path(tiny_zoo['internlm2_chat']).parent
    llm_folder = build_real_size('internlm2_chat_1_8b', tmp_path, zoo,
                                 overrides=dict(num_hidden_layers=1, vocab_size=1024))
    assert sorted(p.name for p in llm_folder.glob('model*')) == ['model.safetensors']  # one shard, as transformers
    llm = load_llm(llm_folder)
    assert llm.config.hidden_size == 2048 and llm.config.num_key_value_heads == 8
    assert next(llm.parameters()).dtype == torch.bfloat16
    clip_folder = build_real_size('clip_vit_large_p14_336', tmp_path, zoo,
                                  overrides=dict(vision_config=dict(num_hidden_layers=1)))
    assert load_vision_encoder(clip_folder).config.image_size == 336
    assert load_image_processor(clip_folder).num_image_tokens == 576
