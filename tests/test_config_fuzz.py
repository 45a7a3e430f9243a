"""Property-based tests of bad configurations: mutate a valid config every way a user can get it wrong.

Every mutation is invalid by construction. For each, `ml-suite-train` must exit with 2 and print one paragraph that
starts `ml-suite-train: error:`, names the offending key and the config file (or the override as typed), holds no
traceback, creates no file, and takes well under a second. Most examples call the command's `main` in this process
(torch is already imported, so each takes milliseconds); `test_config_error_cli_*` run the real command in a fresh
process and bound its CPU time.

The examples are derandomized (the same every run, as CI needs) and bounded in number; the `slow` test runs many more.
"""
import contextlib, copy, io, os, resource, signal, subprocess, sys, tempfile, time
from dataclasses import dataclass, field, fields
from pathlib import Path
import pytest, yaml
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
from conftest import ROOT, all_files

import torch
from ml_suite import config as C
from ml_suite.core import ConfigError
from ml_suite.data import DATASETS, HeatDataset
from ml_suite.models import MODELS, UNet
from ml_suite.losses import LOSSES, METRICS
from ml_suite.train import main

# Derandomized: the same examples on every run. CPU time per example is asserted instead of a wall-clock deadline,
# which a loaded machine would break.
FAST = settings(derandomize=True, max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LARGE = settings(FAST, max_examples=400)

# ---------------------------------------------------------------------------------------------------------------------
# The valid configs that are mutated
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(
    seed=0, run_dir='runs/fuzz',
    dataset=dict(name='heat', size=16, modes=4, num_samples=32, normalize=True),
    model=dict(type='unet', criterion='mse', width=4, depth=1, padding_mode='circular'),
    batch_size=8, grad_accum_steps=1, num_workers=0, total_updates=20, updates_per_epoch=10, val_batch_size=8,
    log_every=5, metrics=['mae', 'rmse'],
    optimizer=dict(name='AdamW', learning_rate=3e-3, weight_decay=1e-4, betas=[0.9, 0.99]),
    lr_scheduler=dict(first_stage=dict(name='LinearLR', start_factor=0.1, end_factor=1.0, num_updates=5),
                      second_stage=dict(name='CosineAnnealingLR', num_updates=-1, eta_min=1e-4)),
    max_grad_norm=1.0, amp=False, precision='bfloat16', compile=False, mem_budget=1.0,
    checkpoint=dict(checkpoint_name='latest', restart=True, save_every_epochs=0, keep_last=0, every_updates=0,
                    every_minutes=0.0),
    time_limit='01:00:00',
    preemption=dict(requeue_signals=['SIGUSR1'], exit_signals=['SIGTERM'], requeue=True),
    wandb=dict(enabled=False, project='fuzz', tags=['a'], mode='offline'),
    device='cpu', dist_backend='auto', dist_timeout_minutes=10.0, progress=False)
QUICKSTART = {k: v for k, v in yaml.safe_load((ROOT / 'configs' / 'quickstart.yml').read_text()).items() if v is not None}
BASES = st.sampled_from([SMALL, QUICKSTART])
FILE = 'train.yml'

def _params(cls): return [n for n in C.inspect.signature(cls).parameters if n not in ('self', 'optimizer', 'params')]
def _fields(cls): return [f.name for f in fields(cls)]

def section_class(base:dict, path:tuple):
    "The constructor that the keys of the section at `path` go to, if it passes keys on."
    if path == ('dataset',): return DATASETS[base['dataset']['name']]
    if path == ('model',): return MODELS[base['model']['type']]
    if path == ('optimizer',): return getattr(torch.optim, base['optimizer']['name'])
    if len(path) == 2 and path[0] == 'lr_scheduler':
        return getattr(torch.optim.lr_scheduler, base['lr_scheduler'][path[1]]['name'])

SCHEMA = {(): C.Config, ('dataset',): C.DatasetConfig, ('model',): C.ModelConfig, ('optimizer',): C.OptimizerConfig,
          ('lr_scheduler',): C.SchedulerConfig, ('checkpoint',): C.CheckpointConfig, ('preemption',): C.PreemptionConfig,
          ('wandb',): C.WandbConfig}

def valid_keys(base:dict, path:tuple)->set:
    "Every key that is valid in the section at `path` of `base` (schema fields and constructor parameters)."
    cls = SCHEMA.get(path, C.StageConfig if path[:1] == ('lr_scheduler',) else None)
    keys = set(_fields(cls))
    if (c := section_class(base, path)) is not None: keys |= set(_params(c)) | {'lr', 'params', 'split', 'T_max', 'total_iters'}
    return keys

def sections(d:dict, path=()):
    "Key paths of every mapping in `d`, the top level included."
    yield path
    for k, v in d.items():
        if isinstance(v, dict): yield from sections(v, path + (k,))

def leaves(d:dict, path=()):
    "(key path, value) of every value in `d` that is not a mapping."
    for k, v in d.items():
        if isinstance(v, dict): yield from leaves(v, path + (k,))
        else: yield path + (k,), v

def get(d, path):
    for p in path: d = d[p]
    return d

def put(d, path, value):
    "A copy of `d` with the value at `path` (the top level if `path` is empty) replaced by `value`."
    if not path: return copy.deepcopy(value)
    d = copy.deepcopy(d); get(d, path[:-1])[path[-1]] = value
    return d

def delete(d, path):
    d = copy.deepcopy(d); del get(d, path[:-1])[path[-1]]
    return d

# ---------------------------------------------------------------------------------------------------------------------
# Running the command and checking what the user sees
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    what:str                          # the mutation, for failure messages
    data:dict|None = None             # the config, written as YAML to train.yml ...
    text:str|bytes|None = None        # ... or this text, as it is
    overrides:list = field(default_factory=list)
    fragments:list = field(default_factory=list)   # the message must hold each of these
    files:dict = field(default_factory=dict)       # other files beside the config (a user's module, say)

    def write(self, folder:Path)->Path:
        for name, text in self.files.items(): (folder / name).write_text(text)
        (folder / '.env').write_text('# read by every run; must not be written to\nML_SUITE_FUZZ_DOTENV=1\n')
        p = folder / FILE
        t = yaml.safe_dump(self.data, sort_keys=False) if self.text is None else self.text
        p.write_bytes(t) if isinstance(t, bytes) else p.write_text(t)
        return p

def check_message(case:Case, code, msg:str):
    ctx = f"{case.what}\n{msg}"
    assert code == 2, f"exit code {code}, not 2: {ctx}"
    assert 'Traceback' not in msg, ctx
    assert msg.startswith('ml-suite-train: error: '), ctx
    assert '\n' not in msg.strip(), f"not one paragraph: {ctx}"
    names_source = FILE in msg if not case.overrides else any(f"'{o}'" in msg for o in case.overrides) or FILE in msg
    assert names_source, f"names neither {FILE} nor the override: {ctx}"
    for f in case.fragments: assert f in msg, f"{f!r} not in the message: {ctx}"

def run_in_process(case:Case):
    "Run `main` on `case` in a fresh folder (the working directory); check the exit, the message, files and CPU time."
    event(case.what.split(':')[0])   # what was tried: pytest --hypothesis-show-statistics
    env, cwd, handlers = dict(os.environ), os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        cfg = case.write(folder)
        before = {p: p.stat().st_mtime_ns for p in folder.rglob('*')}
        err = io.StringIO()
        os.chdir(folder)
        try:
            cpu = time.process_time()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try: code = main([str(cfg), *case.overrides])
                except SystemExit as e: code = e.code
            cpu = time.process_time() - cpu
        finally:
            os.chdir(cwd); os.environ.clear(); os.environ.update(env)
            for s, h in handlers.items(): signal.signal(s, h)
        check_message(case, code, err.getvalue())
        after = {p: p.stat().st_mtime_ns for p in folder.rglob('*')}
        assert after == before, f"files created or changed: {sorted(set(after) ^ set(before))}: {case.what}"
        assert cpu < 1.0, f"{cpu:.2f} s of CPU time: {case.what}"

@pytest.fixture(scope='module', autouse=True)
def warm():
    "Import torch and the registries once, so that each example measures the config check, not the import."
    for base in (SMALL, QUICKSTART): C.load_config(base)

def test_bases_are_valid():
    "The mutations start from valid configs: the errors come from the mutations."
    for base in (SMALL, QUICKSTART):
        cfg, _ = C.load_config(base)
        assert cfg.total_updates == base['total_updates']

# ---------------------------------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------------------------------

IDENT = st.from_regex(r'[a-z][a-z_]{1,11}', fullmatch=True)
LOWER = 'abcdefghijklmnopqrstuvwxyz_'

@st.composite
def one_edit(draw, word:str):
    "`word` with one letter deleted, inserted, replaced or two neighbours swapped."
    i = draw(st.integers(0, len(word) - 1))
    c = draw(st.sampled_from(LOWER))
    kind = draw(st.sampled_from(['delete', 'insert', 'replace', 'swap'] if len(word) > 1 else ['insert', 'replace']))
    if kind == 'delete': out = word[:i] + word[i + 1:]
    elif kind == 'insert': out = word[:i] + c + word[i:]
    elif kind == 'replace': out = word[:i] + c + word[i + 1:]
    else: i = min(i, len(word) - 2); out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    assume(out != word)
    return out

def wrong_values(v)->list:
    "Values whose type is wrong where `v` is right."
    if isinstance(v, bool): return ['maybe', 2, [1], {'a': 1}]
    if isinstance(v, int): return ['abc', 1.5, True, [1], {'a': 1}]
    if isinstance(v, float): return ['abc', True, [1], {'a': 1}]
    if isinstance(v, str): return [1.5, True, [1], {'a': 1}]
    if isinstance(v, list): return [5, 'abc', {'a': 1}]
    if isinstance(v, dict): return [5, 'abc', [1]]
    raise AssertionError(f"no wrong values for {v!r}")

@st.composite
def wrong_type(draw):
    base = draw(BASES)
    path, v = draw(st.sampled_from(list(leaves(base))))
    bad = draw(st.sampled_from(wrong_values(v)))
    return Case(f"{'.'.join(path)}: {v!r} -> {bad!r}", put(base, path, bad), fragments=[path[-1]])

@st.composite
def section_replaced(draw):
    base = draw(BASES)
    path = draw(st.sampled_from([p for p in sections(base) if p]))
    bad = draw(st.sampled_from(wrong_values({})))
    return Case(f"section {'.'.join(path)} -> {bad!r}", put(base, path, bad), fragments=['.'.join(path)])

@st.composite
def unknown_key(draw):
    base = draw(BASES)
    path = draw(st.sampled_from(list(sections(base))))
    key = draw(IDENT)
    assume(key not in valid_keys(base, path))
    return Case(f"unknown key {key!r} in {path}", put(base, path + (key,), 1), fragments=[f"unknown key '{key}'"])

@st.composite
def misspelt_key(draw):
    "A real key, misspelt by one edit: the message must suggest a key."
    base = draw(BASES)
    path = draw(st.sampled_from(list(sections(base))))
    key = draw(st.sampled_from(list(get(base, path))))
    typo = draw(one_edit(key))
    assume(typo not in valid_keys(base, path))
    sect = get(base, path)
    data = put(base, path, {(typo if k == key else k): v for k, v in sect.items()})
    return Case(f"{key!r} misspelt {typo!r} in {path}", data, fragments=[f"'{typo}'", 'did you mean'])

REQUIRED = [('dataset',), ('model',), ('batch_size',), ('total_updates',), ('dataset', 'name'), ('model', 'type'),
            ('lr_scheduler', 'first_stage', 'name')]

@st.composite
def missing_key(draw):
    base = draw(BASES)
    path = draw(st.sampled_from(REQUIRED))
    return Case(f"{path} deleted", delete(base, path), fragments=[f"missing required key '{'.'.join(path)}'"])

OUT_OF_RANGE = {  # key path: values that break its rule
    ('batch_size',): [0, -1, -8], ('total_updates',): [0, -5], ('updates_per_epoch',): [0, -1],
    ('grad_accum_steps',): [0, -2], ('num_workers',): [-1], ('val_batch_size',): [0, -1], ('log_every',): [0],
    ('checkpoint', 'keep_last'): [-1], ('checkpoint', 'every_updates'): [-1], ('checkpoint', 'save_every_epochs'): [-3],
    ('checkpoint', 'every_minutes'): [-1.0], ('optimizer', 'learning_rate'): [0, -1e-3], ('optimizer', 'weight_decay'): [-0.1],
    ('max_grad_norm',): [0, -1.0], ('dist_timeout_minutes',): [0], ('mem_budget',): [0, -0.5, 1.5, 2],
    ('time_limit',): ['1h', 'abc', -5, 0, '00:00:00', '1:2:3:4', '-1'],
    ('dataset', 'size'): [0, -4, 2], ('dataset', 'num_samples'): [0, -1], ('dataset', 'modes'): [0, 20],
    ('model', 'width'): [0, -3], ('model', 'depth'): [-1], ('optimizer', 'betas'): [[1.5, 0.9], [0.9]],
    ('lr_scheduler', 'first_stage', 'num_updates'): [0, -2], ('lr_scheduler', 'first_stage', 'start_factor'): [0, -1.0, 2.0],
    ('checkpoint', 'checkpoint_name'): [-1, 'lates', 'worst'],
}

@st.composite
def out_of_range(draw):
    base = draw(BASES)
    path = draw(st.sampled_from([p for p in OUT_OF_RANGE if p[:-1] == () or p[:-1] in set(sections(base))]))
    bad = draw(st.sampled_from(OUT_OF_RANGE[path]))
    return Case(f"{'.'.join(path)} = {bad!r}", put(base, path, bad), fragments=[path[-1]])

@st.composite
def inconsistent(draw):
    "Values that are each fine but contradict each other."
    base = copy.deepcopy(draw(BASES))
    n, kind = base['total_updates'], draw(st.sampled_from(['warmup', 'sum', 'two_rest', 'fp16', 'mem_budget', 'signals']))
    if kind == 'warmup':     # a warmup stage as long as the run or longer, while another stage takes "the rest"
        base['lr_scheduler']['first_stage']['num_updates'] = n + draw(st.integers(0, 1000))
        frag = ['lr_scheduler', 'total_updates']
    elif kind == 'sum':      # every stage fixed, together longer than the run
        for k, s in base['lr_scheduler'].items(): s['num_updates'] = n // len(base['lr_scheduler']) + 1 + draw(st.integers(0, 50))
        frag = ['lr_scheduler', 'total_updates']
    elif kind == 'two_rest':
        for s in base['lr_scheduler'].values(): s['num_updates'] = -1
        frag = ['lr_scheduler', 'only one stage']
    elif kind == 'fp16':
        base.update(precision='float16', amp=False); frag = ['precision', 'amp']
    elif kind == 'mem_budget':
        base.update(mem_budget=draw(st.sampled_from([0.5, 0.1, 0.99])), compile=False); frag = ['mem_budget', 'compile']
    else:
        base['preemption'] = dict(requeue_signals=['SIGUSR1', 'SIGTERM'], exit_signals=['SIGTERM']); frag = ['preemption', 'SIGTERM']
    return Case(f"inconsistent: {kind}", base, fragments=frag)

def _valid_names(key:str)->set:
    if key == ('optimizer', 'name'):
        return {n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)}
    if key[-1] == 'name' and key[0] == 'lr_scheduler':
        return {n for n, c in vars(torch.optim.lr_scheduler).items() if isinstance(c, type)}
    return {('model', 'type'): set(MODELS), ('dataset', 'name'): set(DATASETS), ('model', 'criterion'): set(LOSSES),
            ('metrics',): set(METRICS), ('precision',): {'bfloat16', 'float16'}, ('device',): {'auto', 'cpu', 'cuda', 'mps'},
            ('dist_backend',): {'auto', 'nccl', 'gloo'}, ('wandb', 'mode'): {'online', 'offline', 'disabled'}}[key]

NAMED = [('optimizer', 'name'), ('lr_scheduler', 'first_stage', 'name'), ('lr_scheduler', 'second_stage', 'name'),
         ('model', 'type'), ('dataset', 'name'), ('model', 'criterion'), ('metrics',), ('precision',), ('device',),
         ('dist_backend',), ('wandb', 'mode')]

@st.composite
def unknown_name(draw):
    "A name (of an optimizer, loss, scheduler, model, ...) that names nothing: random, or a valid one misspelt."
    base = draw(BASES)
    key = draw(st.sampled_from([k for k in NAMED if k[:-1] in set(sections(base))]))
    valid = _valid_names(key)
    misspelt = draw(st.booleans())
    name = draw(one_edit(draw(st.sampled_from(sorted(valid))))) if misspelt else draw(IDENT)
    assume(name.lower() not in {v.lower() for v in valid} and not name.lower().startswith('cuda'))
    data = put(base, key, [name, *base['metrics'][1:]] if key == ('metrics',) else name)
    return Case(f"{'.'.join(key)}: unknown name {name!r}", data, fragments=[f"'{name}'", key[0]])

MODULES = {'fuzzmod.py': 'WIDTH = 3\n\nclass Net:\n    pass\n', 'brokenmod.py': 'def oops(:\n    pass\n'}

@st.composite
def bad_import_path(draw):
    "`package.module:Name` paths that do not resolve, or resolve to something that cannot be built."
    base = draw(BASES)
    key = draw(st.sampled_from([('model', 'type'), ('dataset', 'name'), ('model', 'criterion'), ('metrics',)]))
    path, frag = draw(st.sampled_from([('no_such_module_zq:Thing', 'cannot be imported'), ('collections:NoSuchThing', "has no"),
                                       ('math:pi', 'not a class or function'), ('fuzzmod:Nope', 'has no'),
                                       ('fuzzmod:WIDTH', 'not a class or function'), ('brokenmod:Net', 'SyntaxError'),
                                       (':Net', 'failed'), ('.fuzzmod:Net', 'failed')]))
    data = put(base, key, [path] if key == ('metrics',) else path)
    return Case(f"{'.'.join(key)}: {path}", data, fragments=[key[-1] if key != ('metrics',) else 'metrics', frag],
                files=dict(MODULES))

def _dumped(base)->list:
    return yaml.safe_dump(base, sort_keys=False, default_flow_style=False).splitlines(keepends=True)

@st.composite
def malformed_yaml(draw):
    base = draw(BASES)
    lines = _dumped(base)
    kind = draw(st.sampled_from(['tab', 'bracket', 'brace', 'quote', 'duplicate', 'top_list', 'top_scalar', 'empty',
                                 'comments', 'not_utf8', 'indent']))
    nested = [i for i, l in enumerate(lines) if l.startswith('  ') and not l.strip().startswith('-')]
    scalar = [i for i, l in enumerate(lines) if ': ' in l and not l.strip().startswith('-')]
    frag = ['line']
    if kind == 'tab':
        i = draw(st.sampled_from(nested)); lines[i] = '\t' + lines[i].lstrip(' ')
    elif kind in ('bracket', 'brace', 'quote'):
        i = draw(st.sampled_from(scalar)); k, _, v = lines[i].rstrip('\n').partition(': ')
        lines[i] = f"{k}: {dict(bracket='[', brace='{', quote=chr(34))[kind]}{v}\n"
    elif kind == 'duplicate':
        i = draw(st.sampled_from(scalar)); lines.insert(i + 1, lines[i]); frag = ['duplicate key', lines[i].split(':')[0].strip()]
    elif kind == 'indent':   # a key indented one space more than the key above it: a continuation with ': ' in it
        indent = lambda l: len(l) - len(l.lstrip(' '))
        i = draw(st.sampled_from([i for i in nested if i - 1 in scalar and indent(lines[i - 1]) == indent(lines[i])]))
        lines[i] = ' ' + lines[i]
    elif kind == 'top_list': lines = [f"- {l.strip()}\n" for l in lines[:3]]; frag = ['mapping']
    elif kind == 'top_scalar': lines = ['just some text\n']; frag = ['mapping']
    elif kind == 'empty': lines = []; frag = ['empty']
    elif kind == 'comments': lines = ['# only a comment\n', '\n']; frag = ['empty']
    text = ''.join(lines)
    if kind == 'not_utf8': text, frag = text.encode('utf-16'), ['UTF-8']
    return Case(f"malformed YAML: {kind}", text=text, fragments=frag)

@st.composite
def bad_override(draw):
    base = draw(BASES)
    kind = draw(st.sampled_from(['no_equals', 'unknown_key', 'misspelt', 'bad_value', 'section_scalar', 'inside_scalar',
                                 'bad_key', 'env']))
    if kind == 'no_equals': ov = draw(IDENT); frag = ['key=value']
    elif kind == 'unknown_key':
        path = draw(st.sampled_from(list(sections(base)))); key = draw(IDENT)
        assume(key not in valid_keys(base, path)); ov = '.'.join(path + (key,)) + '=1'; frag = [f"unknown key '{key}'"]
    elif kind == 'misspelt':
        path = draw(st.sampled_from(list(sections(base)))); key = draw(one_edit(draw(st.sampled_from(list(get(base, path))))))
        assume(key not in valid_keys(base, path)); ov = '.'.join(path + (key,)) + '=1'; frag = [f"'{key}'", 'did you mean']
    elif kind == 'bad_value':
        path, v = draw(st.sampled_from([(p, v) for p, v in leaves(base) if not isinstance(v, (str, list))]))
        ov = '.'.join(path) + '=' + draw(st.sampled_from(['abc', '[1', '{a: 1}'])); frag = [path[-1]]
    elif kind == 'section_scalar':
        path = draw(st.sampled_from([p for p in sections(base) if p])); ov = '.'.join(path) + '=3'; frag = ['section']
    elif kind == 'inside_scalar':
        path, _ = draw(st.sampled_from(list(leaves(base)))); ov = '.'.join(path) + '.x=1'; frag = ['not a section']
    elif kind == 'bad_key': ov = draw(st.sampled_from(['=3', 'a..b=1', '.seed=1', 'seed.=1', '1seed=2', 'see d=1'])); frag = ['key=value']
    else: ov = 'run_dir=${ML_SUITE_FUZZ_UNSET_VAR}'; frag = ['ML_SUITE_FUZZ_UNSET_VAR']
    return Case(f"override, {kind}: {ov!r}", base, overrides=[ov], fragments=frag)

MUTATIONS = dict(wrong_type=wrong_type(), section_replaced=section_replaced(), unknown_key=unknown_key(),
                 misspelt_key=misspelt_key(), missing_key=missing_key(), out_of_range=out_of_range(),
                 inconsistent=inconsistent(), unknown_name=unknown_name(), bad_import_path=bad_import_path(),
                 malformed_yaml=malformed_yaml(), bad_override=bad_override())

@pytest.mark.parametrize('kind', MUTATIONS)
@FAST
@given(data=st.data())
def test_bad_config_is_one_paragraph_exit_2(kind, data):
    run_in_process(data.draw(MUTATIONS[kind], label='case'))

@pytest.mark.slow
@LARGE
@given(case=st.one_of(*MUTATIONS.values()))
def test_bad_config_large(case):
    "Many more examples of every mutation at once (minutes)."
    run_in_process(case)

# ---------------------------------------------------------------------------------------------------------------------
# The real command in a fresh process: exit 2 in well under a second of CPU, torch never imported
# ---------------------------------------------------------------------------------------------------------------------

CLI = [str(Path(sys.executable).parent / 'ml-suite-train')]
CLI_CASES = {
    'unknown key': Case('unknown key', put(SMALL, ('checkpoint', 'keep_lst'), 3), fragments=["did you mean 'keep_last'"]),
    'wrong type': Case('wrong type', put(SMALL, ('batch_size',), 'eight'), fragments=['batch_size', 'must be an integer']),
    'malformed yaml': Case('malformed yaml', text='model:\n\ttype: unet\n', fragments=['line 2']),
    'bad override': Case('bad override', SMALL, overrides=['optimizer=3'], fragments=['optimizer', 'section']),
    'warmup too long': Case('warmup', put(SMALL, ('lr_scheduler', 'first_stage', 'num_updates'), 500), fragments=['total_updates=20']),
    'missing module': Case('missing module', put(SMALL, ('model', 'type'), 'no_such_module_zq:Net'), fragments=['cannot be imported']),
}

def _run_cli(case:Case, folder:Path, code:str|None=None):
    cfg = case.write(folder)
    before = all_files(folder)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = CLI + [str(cfg), *case.overrides] if code is None else [sys.executable, '-c', code, str(cfg), *case.overrides]
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120)
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert all_files(folder) == before, f"files created: {all_files(folder) - before}"
    return r, (now.ru_utime - used.ru_utime) + (now.ru_stime - used.ru_stime)

@pytest.mark.parametrize('name', CLI_CASES)
def test_config_error_cli_under_a_second(tmp_path, name):
    case = CLI_CASES[name]
    r, cpu = _run_cli(case, tmp_path)
    check_message(case, r.returncode, r.stderr)
    assert r.stdout == ''
    assert cpu < 1.0, f"the command took {cpu:.2f} s of CPU time for a config error"

def test_config_error_cli_does_not_import_torch(tmp_path):
    "The reason it is fast: a config error returns before torch is imported."
    code = ("import sys; from ml_suite.train import main\n"
            "code = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(code)")
    r, _ = _run_cli(CLI_CASES['wrong type'], tmp_path, code)
    assert (r.returncode, r.stdout.strip()) == (2, 'False'), (r.returncode, r.stdout, r.stderr)

TORCH_CASES = {   # found with the classes in hand (registries, torch's optimizers and schedulers); in-process above for the rest
    'unknown optimizer': Case('unknown optimizer', put(SMALL, ('optimizer', 'name'), 'AdamX'),
                              fragments=["unknown optimizer.name 'AdamX'", 'did you mean']),
}

@pytest.mark.parametrize('name', TORCH_CASES)
def test_config_error_cli_needs_torch(tmp_path, name):
    "Names and the keys passed on to a constructor are checked once torch is imported: exit 2, one paragraph, no files."
    case = TORCH_CASES[name]
    r, cpu = _run_cli(case, tmp_path)
    check_message(case, r.returncode, r.stderr)
