"""The CLI surface: fast help, one-line errors with exit 2, list-cfg / copy-cfg from any directory."""
import subprocess
import sys
import time

from mmllava.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'mmllava', *args], capture_output=True, text=True, cwd=cwd)


def test_help_is_fast_and_imports_nothing_heavy():
    start = time.perf_counter()
    out = run_cli('--help')
    assert out.returncode == 0 and 'list-cfg' in out.stdout
    assert time.perf_counter() - start < 5  # generous for a loaded CI box; the design target is < 1 s
    probe = subprocess.run([sys.executable, '-c', 'import sys; from mmllava.cli import build_parser; build_parser();'
                            'print(sorted(m for m in ("torch", "transformers", "mmengine", "deepspeed") if m in sys.modules))'],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == '[]'


def test_unknown_verb_is_one_line_exit_2():
    out = run_cli('fly')
    assert out.returncode == 2
    assert out.stderr.count('\n') == 1
    assert out.stderr.startswith("mmllava: error: argument VERB: invalid choice: 'fly'")


def test_unknown_flag_is_one_line_exit_2():
    out = run_cli('list-cfg', '--colour')
    assert out.returncode == 2
    assert out.stderr.strip().endswith('unrecognized arguments: --colour (see `mmllava --help`)')
    assert 'Traceback' not in out.stderr


def test_list_cfg_pattern(tmp_path, capsys):
    assert main(['list-cfg', '-p', 'llava_internlm2_chat_1_8b']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune' in lines
    assert 'llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain' in lines
    assert not any(line.startswith('llava_tiny') for line in lines)


def test_list_cfg_no_match_exits_1(capsys):
    assert main(['list-cfg', '-p', 'no_such_thing']) == 1


def test_copy_cfg_from_another_directory(tmp_path):
    out = run_cli('copy-cfg', 'llava_tiny_internlm2_chat_clip_pretrain', 'cfgs', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / 'cfgs' / 'llava_tiny_internlm2_chat_clip_pretrain_copy.py').is_file()


def test_copy_cfg_unknown_name_is_one_line_exit_1(tmp_path):
    out = run_cli('copy-cfg', 'nope', 'cfgs', cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == ("mmllava copy-cfg: error: no config named 'nope' (neither a file nor a shipped config); "
                          'run `mmllava list-cfg` to see them\n')
