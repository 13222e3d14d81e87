"""Config lookup, copy, --cfg-options reaching derived fields, build()."""
import textwrap

import pytest

from mmllava.config import build, copy_config, load_config, parse_cfg_options

from mmllava.config_source import find_config, rewrite_assignments
from mmllava.errors import MMLLaVAError

CFG = textwrap.dedent('''\
    from collections import OrderedDict
    # Part 1
    llm_name_or_path = 'internlm/internlm2-chat-1_8b'
    data_root = './data/llava_data/'
    data_path = data_root + 'repeated_data.json'
    batch_size = 16
    evaluation_inputs = [
        '请描述一下这张照片',
        'Please describe this picture',
    ]
    tokenizer = dict(type=OrderedDict, path=llm_name_or_path)
    model = dict(type='collections.OrderedDict', freeze_llm=True, llm=dict(path=llm_name_or_path), tokenizer=tokenizer)
    train_dataloader = dict(batch_size=batch_size, dataset=dict(data_path=data_path))
''')


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / 'my_config.py'
    path.write_text(CFG, encoding='utf-8')
    return path


def test_top_level_override_reaches_derived_fields(cfg_file):
    cfg = load_config(cfg_file, parse_cfg_options(['llm_name_or_path=/models/llm', 'data_root=/data/']))
    assert cfg.llm_name_or_path == '/models/llm'
    assert cfg.model.llm.path == '/models/llm'
    assert cfg.tokenizer.path == '/models/llm'
    assert cfg.model.tokenizer.path == '/models/llm'
    assert cfg.train_dataloader.dataset.data_path == '/data/repeated_data.json'
    assert cfg.filename == str(cfg_file)


def test_override_values_are_typed_and_lists_replace_multiline_values(cfg_file):
    cfg = load_config(cfg_file, parse_cfg_options(['batch_size=2', 'evaluation_inputs=[a,b,c]']))
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.evaluation_inputs == ['a', 'b', 'c']


def test_values_keep_spaces_and_types():
    parsed = parse_cfg_options(["SYSTEM=hello world", "evaluation_inputs=['What color is the shape?']",
                                'lr=1e-3', 'flag=true', 'x=None', 'names=a,b', 'path=/models/x y'])
    assert parsed == {'SYSTEM': 'hello world', 'evaluation_inputs': ['What color is the shape?'], 'lr': 1e-3,
                      'flag': True, 'x': None, 'names': ['a', 'b'], 'path': '/models/x y'}


def test_dotted_override(cfg_file):
    cfg = load_config(cfg_file, parse_cfg_options(['model.freeze_llm=False']))
    assert cfg.model.freeze_llm is False


def test_unknown_top_level_key_is_one_line_error(cfg_file):
    with pytest.raises(MMLLaVAError) as e:
        load_config(cfg_file, parse_cfg_options(['llm_path=/x']))
    assert str(e.value) == f"{cfg_file}: --cfg-options llm_path: the config has no variable named 'llm_path'"


def test_malformed_option():
    with pytest.raises(MMLLaVAError, match=r"--cfg-options expects KEY=VALUE, got 'batch_size'"):
        parse_cfg_options(['batch_size'])


def test_config_that_raises_is_reported_with_its_path(tmp_path):
    path = tmp_path / 'bad.py'
    path.write_text('x = 1\ny = undefined_name\n')
    with pytest.raises(MMLLaVAError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:2: the config failed to load: NameError: name 'undefined_name' is not defined"


def test_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / 'bad.py'
    path.write_text('x = 1\ny = (\n')
    with pytest.raises(MMLLaVAError, match=r'bad\.py:2: syntax error in config'):
        load_config(path)


def test_rewrite_keeps_everything_else_byte_for_byte():
    src = "a = 1  # keep\nb = 'x'\nc = a + 1\n"
    assert rewrite_assignments(src, {'a': 5}) == "a = 5  # keep\nb = 'x'\nc = a + 1\n"


def test_build_nested_and_dotted_types():
    obj = build(dict(type='collections.OrderedDict', inner=dict(type=dict, x=1), plain=[dict(type=list)]))
    assert obj == {'inner': {'x': 1}, 'plain': [[]]}
    assert build(5) == 5
    with pytest.raises(MMLLaVAError, match="cannot build 'nope'"):
        build(dict(type='nope'))


def test_shipped_config_found_by_name_and_copied(tmp_path, monkeypatch):
    name = 'llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune'
    monkeypatch.chdir(tmp_path)
    path = find_config(name)
    assert path.name == name + '.py'
    dst = copy_config(name, tmp_path / 'out')
    assert dst == tmp_path / 'out' / (name + '_copy.py')
    assert dst.read_text() == path.read_text()
    assert find_config(str(dst)) == dst


def test_unknown_name_suggests_similar():
    with pytest.raises(MMLLaVAError) as e:
        find_config('internlm2_chat_1_8b_qlora')
    assert "no config named 'internlm2_chat_1_8b_qlora'" in str(e.value)
    assert 'similar: llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune' in str(e.value)


def _takes_a_size(size: int):
    if size < 0:
        raise TypeError('size must be a natural number')  # a TypeError raised inside the component
    return size


def test_a_component_called_with_a_wrong_argument_is_one_line_naming_the_config(tmp_path):
    """The arguments are checked against the component's signature before anything is built: the
    config's own callables, a dotted path, and registry names of the fields mmengine builds."""
    from mmllava.config_errors import reported_config_errors

    path = tmp_path / 'my_config.py'
    path.write_text('from test_config import _takes_a_size\n'
                    'size = dict(type=_takes_a_size, sise=3)\n'
                    "train_dataloader = dict(batch_size=1, dataset=[1, 2],\n"
                    "                        sampler=dict(type='DefaultSampler', shufle=True, seed=None))\n"
                    "optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='torch.optim.AdamW', lr=1e-3,\n"
                    "                     beta=(0.9, 0.99)), constructor='DefaultOptimWrapperConstructor')\n")
    cfg = load_config(path)
    with pytest.raises(MMLLaVAError) as ours:
        with reported_config_errors(cfg):
            raise AssertionError('the body runs after the check')
    assert str(ours.value) == f"{path}: size: _takes_a_size() got an unexpected keyword argument 'sise'"
    with pytest.raises(MMLLaVAError) as mmengine_built:
        with reported_config_errors(load_config(path, parse_cfg_options(['size=None']))):
            pass
    assert str(mmengine_built.value) == (f"{path}: train_dataloader.sampler: DefaultSampler.__init__() got an "
                                         "unexpected keyword argument 'shufle'")
    with pytest.raises(MMLLaVAError) as dotted:
        with reported_config_errors(load_config(path, parse_cfg_options(
                ['size=None', 'train_dataloader=None']))):
            pass
    assert str(dotted.value) == (f"{path}: optim_wrapper.optimizer: AdamW.__init__() got an unexpected keyword "
                                 "argument 'beta'")  # constructor: a key mmengine takes out itself
    # only the part a command builds is checked
    with reported_config_errors(cfg, builds='train_dataloader.dataset'):
        pass
    # raised inside the component: a bug or a value error there, so the traceback stays
    with pytest.raises(TypeError, match='size must be a natural number'):
        with reported_config_errors(load_config(path, parse_cfg_options(
                ['size=None', 'train_dataloader=None', 'optim_wrapper=None']))):
            build(dict(type=_takes_a_size, size=-1))


def test_the_hint_comes_from_the_error_attributes_never_from_its_text(tmp_path, monkeypatch):
    import pickle

    from mmllava.config_errors import with_config_hint
    from mmllava.errors import PathNotFoundError

    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'c.py'
    path.write_text("data_path = 'd/x.json'\ncopy_of_it = 'd/y.json'\nsame_as_copy = 'd/y.json'\nmax_length = 0\n")
    cfg = load_config(path)

    def hinted(error):
        return str(with_config_hint(cfg, error))

    looked = 'relative paths are taken from the current folder'
    # the same path written differently is the same value; the setting's own name is not needed
    assert hinted(PathNotFoundError('data file not found: ./d/x.json', value='./d/x.json')) == (
        f'data file not found: ./d/x.json (looked for {tmp_path}/d/x.json: {looked}; edit data_path in {path})')
    # a message that merely contains a config value gets nothing
    assert hinted(MMLLaVAError('data file not found: d/x.json')) == 'data file not found: d/x.json'
    # two variables hold the value and the error names neither: no guess between them
    assert hinted(PathNotFoundError('not found: d/y.json', value='d/y.json')) == (
        f'not found: d/y.json (looked for {tmp_path}/d/y.json: {looked})')
    assert hinted(PathNotFoundError('not found: d/y.json', setting='copy_of_it', value='d/y.json')) == (
        f'not found: d/y.json (looked for {tmp_path}/d/y.json: {looked}; edit copy_of_it in {path})')
    # a setting whose value came from elsewhere (a dotted --cfg-options) is not the config variable
    assert hinted(MMLLaVAError('max_length: 5 is too short', setting='max_length', value=5)) == (
        'max_length: 5 is too short')
    assert hinted(MMLLaVAError('max_length: 0 is too short', setting='max_length', value=0)) == (
        f'max_length: 0 is too short (edit max_length in {path})')
    # the attributes survive pickling, as a dataloader worker's error is sent to the main process
    error = pickle.loads(pickle.dumps(PathNotFoundError('gone', setting='data_path', value='d/x.json')))
    assert (type(error), str(error), error.setting, error.value) == (PathNotFoundError, 'gone', 'data_path', 'd/x.json')


def test_a_dumped_config_reads_back_with_its_objects_and_dumps_the_same(tmp_path):
    """The work-dir copy ``train`` writes (mmengine's dump: import paths as strings) is a config
    mmllava accepts: types and dtypes are objects again, and it dumps to the same text."""
    import torch

    from mmllava.models import InternVLModel

    cfg = load_config('internvl_tiny_internlm2_lora_finetune')
    cfg.dump(tmp_path / 'first.py')
    text = (tmp_path / 'first.py').read_text()
    assert "type='mmllava.models.InternVLModel'" in text and "torch_dtype='torch.float32'" in text
    again = load_config(tmp_path / 'first.py', parse_cfg_options(['model.internvl.torch_dtype=torch.bfloat16']))
    assert again.model.type is InternVLModel and again.model.internvl.torch_dtype is torch.bfloat16
    assert again.train_dataloader.dataset.type is cfg.train_dataloader.dataset.type
    assert again.optim_wrapper.optimizer.type is torch.optim.AdamW
    assert again.train_dataloader.collate_fn.type is cfg.train_dataloader.collate_fn.type
    reread = load_config(tmp_path / 'first.py')
    reread.dump(tmp_path / 'second.py')
    assert (tmp_path / 'second.py').read_text() == text


def test_configs_written_before_the_pretrained_rename_still_load(tmp_path):
    """``mmllava.builders`` became ``mmllava.pretrained``: a config a user copied earlier (its imports)
    and a work-dir config an earlier run dumped (import paths as strings) load the same functions."""
    from mmllava.pretrained import load_tokenizer
    from mmllava.pretrained.internvl_folder import load_internvl_image_processor

    path = tmp_path / 'earlier_copy.py'
    path.write_text(textwrap.dedent("""\
        from mmllava.builders import load_tokenizer
        from mmllava.builders.internvl import load_internvl_image_processor
        tokenizer = dict(type=load_tokenizer, path='tok')
        image_processor = dict(type=load_internvl_image_processor, path='internvl')
        dumped = [dict(type='mmllava.builders.load_tokenizer', path='tok'),
                  dict(type='mmllava.builders.internvl.load_internvl_image_processor', path='internvl')]
        """))
    cfg = load_config(path)
    assert cfg.tokenizer.type is load_tokenizer and cfg.dumped[0].type is load_tokenizer
    assert cfg.image_processor.type is cfg.dumped[1].type is load_internvl_image_processor


def test_registry_names_and_other_strings_stay_strings(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("optim_wrapper = dict(type='OptimWrapper')\nname = 'torch.float32 is a dtype'\n"
                    "scope = dict(type='nowhere.Missing')\n")
    cfg = load_config(path)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and cfg.name == 'torch.float32 is a dtype'
    assert cfg.scope.type == 'nowhere.Missing'


BASE = textwrap.dedent('''\
    # the base: a standalone config
    root = './'
    data_root = root + 'data/'
    data_path = data_root + 'train.json'
    size = 2
    area = 3 * size ** 2
    names = [
        'a',
        'b',
    ]
    model = dict(size=size, area=area, data=dict(path=data_path))
''')


def _override(tmp_path, text: str, name: str = 'small.py'):
    (tmp_path / 'base.py').write_text(BASE)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_an_override_re_assigns_in_the_base_source_so_derived_fields_follow(tmp_path):
    path = _override(tmp_path, '''\
        # a smaller one
        base_config = 'base.py'
        shared_overrides = ['shared.py']

        data_root = root + 'small/'  # evaluated in the base's namespace
        names = ['c']
    ''')
    (tmp_path / 'shared.py').write_text("size = 10\nnames = ['d']\n")
    cfg = load_config(path)
    assert cfg.model.size == 10 and cfg.model.area == 300
    assert cfg.model.data.path == './small/train.json' and cfg.names == ['c']  # own lines after the shared ones
    assert 'base_config' not in cfg and 'shared_overrides' not in cfg
    # --cfg-options apply on top of the override's values
    cfg = load_config(path, parse_cfg_options(['size=3', 'model.data.path=x.json']))
    assert cfg.model.area == 27 and cfg.model.data.path == 'x.json'


def test_copying_an_override_writes_the_flattened_standalone_config(tmp_path):
    path = _override(tmp_path, '''\
        # a smaller one
        base_config = 'base.py'

        size = 1  # one
        data_root = '{{tiny_data}}/'
    ''')
    dst = copy_config(str(path), tmp_path / 'out')
    text = dst.read_text()
    assert text.splitlines()[:3] == ['# a smaller one', "# Written out from base_config = 'base.py'",
                                     '# with the values of small.py re-assigned in it.']
    assert "size = 1  # one\n" in text and "data_root = '{{tiny_data}}/'\n" in text  # placeholders as written
    assert not any(line.startswith('base_config') for line in text.splitlines()) and '# the base' not in text
    assert load_config(dst).to_dict() == load_config(path).to_dict()


@pytest.mark.parametrize('text, line, message', [
    ("base_config = 'base.py'\nsise = 1\n", 2, "base has no variable named 'sise' to re-assign"),
    ("base_config = 'base.py'\nimport os\n", 2,
     'an override holds only `NAME = value` lines (and imports its base has): re-assignments of variables of base'),
    ("base_config = 'base.py'\nsize = 1\nsize = 2\n", 3, 'size is re-assigned twice'),
    ("base_config = 'nowhere'\n", 1,
     "base_config: no shipped config or file named 'nowhere' (mmllava list-cfg names the shipped ones)"),
    ("base_config = 'base.py'\nsize = (1,\n", 2, "syntax error in config: '(' was never closed"),
])
def test_a_wrong_override_is_one_line_naming_its_file_and_line(tmp_path, text, line, message):
    path = _override(tmp_path, text)
    with pytest.raises(MMLLaVAError) as e:
        load_config(path)
    assert str(e.value) == f'{path}:{line}: {message}'


def test_an_override_expression_that_fails_names_the_override_line(tmp_path):
    path = _override(tmp_path, "base_config = 'base.py'\n\nnames = ['c']\ndata_root = data_rot + 'x'\n")
    with pytest.raises(MMLLaVAError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:4: the config failed to load: NameError: name 'data_rot' is not defined"
    # and a failure in the base's own lines names the base's line
    (tmp_path / 'shared.py').write_text("size = 'two'\n")  # 3 * 'two' ** 2
    path.write_text("base_config = 'base.py'\nshared_overrides = 'shared.py'\n")
    with pytest.raises(MMLLaVAError) as e:
        load_config(path)
    assert str(e.value) == (f'{tmp_path / "base.py"}:6: the config failed to load: TypeError: '
                            "unsupported operand type(s) for ** or pow(): 'str' and 'int'")
