"""README.md's examples work as written (every block is found automatically, so new ones are
covered as they are added).

**Python blocks** run, each in a fresh namespace and a temporary working directory, on the
models shipped in ``assets/`` and on the tiny random rigs of ``diffkit.testing``.

* The documented preamble: a block whose first line is ``# expects: NAME (what it is), ...``
  uses names that the reader defines first, such as ``pipe``, a Stable Diffusion pipeline. The
  test binds each NAME to its stand-in in ``STAND_INS`` (for ``pipe``: the tiny random SD rig);
  an expected name without a stand-in fails. Any other name a block uses must be defined in the
  block itself (checked statically as well as by running it).
* ``FEWER``: the only edits made to a block's text before it runs, each a sample count that
  would take minutes on a CPU, replaced by a smaller one. Every entry must match some block.

**Command lines**: every ``diffkit ...`` in the README's other fenced blocks (also after
``-m diffkit.cli``) and in its inline code is parsed by the CLI's own parser, without running
it. ``[...]`` marks optional arguments (parsed as given), ``a | b`` alternatives (``diffkit text
nll ... | train`` is also ``diffkit text train``), and an ALL-CAPS word a placeholder (``DIR``,
``FILE``, ``N``). Inline mentions may be partial (a required option left out, a flag without its
value); commands in fenced blocks must be complete.

**Digits examples**: ``--digit K`` is image K of the digits test split, so an ``edit --source S``
must be that digit's label, and ``sample --from-inversion F --labels L`` after ``invert --digit K
--output F`` is an edit, so L must differ from it.

**BDIA**: a block that samples and inverts with BDIA uses one γ (the inverse undoes the sampler
step for step only with the γ the sampler used).
"""

import argparse
import ast
import builtins
import io
import re
import shlex
from contextlib import redirect_stdout
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from diffkit.cli import build_parser
from diffkit.data import digits_tensors
from diffkit.metrics.folders import save_image_folder
from diffkit.models.radd import save_official_checkpoint, tiny_radd_transformer
from diffkit.testing import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
EXPECTS = re.compile(r"#\s*expects:\s*(.+)")

#: sample counts cut down for the test (exact text -> replacement); FID-digits' protocol n is 1,000
FEWER = {"balanced_labels(1000)": "balanced_labels(20)", "n=1000, seed=0)": "n=20, seed=0)"}


def _blocks():
    text = README.read_text()
    return [(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)]


def _python_blocks():
    return [(line, code) for lang, line, code in _blocks() if lang == "python"]


# ---------------------------------------------------------------------- stand-ins
@lru_cache(maxsize=None)
def _tiny_sd():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd_pipeline(tmp):
    """The tiny SD rig, as a fresh pipeline object (a block may swap its scheduler)."""
    base = _tiny_sd()
    pipe = type(base)(**{**base.components, "scheduler": type(base.scheduler).from_config(base.scheduler.config)},
                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image_folder(tmp, name, start):
    x, _ = digits_tensors("test")
    folder = tmp / name
    save_image_folder(x[start:start + 30], folder, levels=17)
    return str(folder)


def _feature_module(tmp):
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # (N, 3, H, W) -> (N, 12)


def _radd_checkpoint(tmp):
    return str(save_official_checkpoint(tiny_radd_transformer(vocab_size=256, length=64), tmp / "radd-official"))


#: name -> (what the README promises it is, a stand-in built in the block's working directory)
STAND_INS = {
    "pipe": ("a Stable Diffusion pipeline", _sd_pipeline),
    "sd_pipe": ("a Stable Diffusion pipeline", _sd_pipeline),
    "samples": ("a folder of generated digits PNGs", lambda tmp: _image_folder(tmp, "samples", 0)),
    "fake": ("an image folder", lambda tmp: _image_folder(tmp, "fake", 100)),
    "real": ("an image folder", lambda tmp: _image_folder(tmp, "real", 200)),
    "my_module": ("an nn.Module mapping images to (N, d) features", _feature_module),
    "radd_dir": ("an official RADD checkpoint folder", _radd_checkpoint),
}


def _split_top_level(text):
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return items + [cur]


def expected_names(code):
    """The names of a block's ``# expects:`` first line (none without one)."""
    first = code.lstrip("\n").split("\n", 1)[0]
    m = EXPECTS.fullmatch(first.strip())
    if not m:
        return []
    names = []
    for item in _split_top_level(m.group(1)):
        name = re.match(r"\s*([A-Za-z_]\w*)", item)
        assert name, f"unreadable item {item!r} in {first!r} (the form is: # expects: NAME (what it is), ...)"
        names.append(name.group(1))
    return names


def undefined_names(code, given=()):
    """Names a block reads that neither it (assignment, import, def, loop/with/except target) nor
    ``given`` defines; flow-insensitive."""
    tree = ast.parse(code)
    bound, loads = set(given) | set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads.add if isinstance(node.ctx, ast.Load) else bound.add)(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return sorted(loads - bound)


PY_BLOCKS = _python_blocks()


def test_readme_has_python_blocks():
    assert len(PY_BLOCKS) >= 8


@pytest.mark.parametrize("line,code", PY_BLOCKS, ids=[f"README.md:{line}" for line, _ in PY_BLOCKS])
def test_python_block_uses_only_names_it_or_its_preamble_defines(line, code):
    names = expected_names(code)
    unknown = [n for n in names if n not in STAND_INS]
    assert not unknown, f"README.md:{line} expects {unknown}: add a stand-in to STAND_INS ({sorted(STAND_INS)})"
    missing = undefined_names(code, names)
    assert not missing, (f"README.md:{line} uses {missing} without defining them; define them in the block or "
                         f"name them on its first line: # expects: NAME (what it is), ...")


@pytest.mark.filterwarnings("ignore::diffkit.metrics.fid.ProtocolWarning")  # FEWER samples than the protocol's n
@pytest.mark.parametrize("line,code", PY_BLOCKS, ids=[f"README.md:{line}" for line, _ in PY_BLOCKS])
def test_python_block_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for old, new in FEWER.items():
        code = code.replace(old, new)
    namespace = {"__name__": "__readme__"}
    namespace.update({n: STAND_INS[n][1](tmp_path) for n in expected_names(code) if n in STAND_INS})
    with redirect_stdout(io.StringIO()):
        exec(compile(code, f"README.md:{line}", "exec"), namespace)


def test_every_fewer_substitution_applies():
    stale = [old for old in FEWER if not any(old in code for _, code in PY_BLOCKS)]
    assert not stale, f"FEWER entries that match no README block (remove them): {stale}"


def test_bdia_blocks_sample_and_invert_with_one_gamma():
    for line, code in PY_BLOCKS:
        gammas = set()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if re.fullmatch(r"(sample|invert)_bdia_\w+", name):
                    gammas |= {ast.unparse(k.value) for k in node.keywords if k.arg == "gamma"}
        assert len(gammas) <= 1, f"README.md:{line} samples and inverts with different gammas: {sorted(gammas)}"


# ---------------------------------------------------------------------- command lines
class _ParseError(Exception):
    pass


def _raise(self, message):
    raise _ParseError(message)


def _command_texts():
    """(where, text, inline) of every diffkit command in the README."""
    text = README.read_text()
    out = []
    for lang, line, code in _blocks():
        if lang == "python":
            continue
        for k, row in enumerate(code.replace("\\\n", " ").splitlines()):
            row = row.strip()
            if row.startswith("diffkit "):
                out.append((f"README.md:{line + 1 + k}", row[len("diffkit "):], False))
            elif "-m diffkit.cli " in row:
                out.append((f"README.md:{line + 1 + k}", row.split("-m diffkit.cli ", 1)[1], False))
    prose = FENCE.sub("", text)
    for m in re.finditer(r"`diffkit ([^`]+)`", prose):
        out.append((f"README.md (inline) `diffkit {m.group(1)}`", m.group(1), True))
    return out


def _command_path(words):
    """The (sub)command words at the start of ``words``: ["text", "nll"] for text nll --file F."""
    parser, path = build_parser(), []
    for w in words:
        subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if w not in subs:
            break
        parser = subs[w]
        path.append(w)
    return path


def _variants(words):
    """Expand ``a | b`` (another subcommand in place of the last one) and ``x|y`` values."""
    segments, cur = [], []
    for w in words:
        if w == "|":
            segments.append(cur)
            cur = []
        else:
            cur.append(w)
    segments.append(cur)
    first = segments[0]
    path = _command_path(first)
    variants = [first] + [path[:-1] + seg for seg in segments[1:]]
    out = []
    for v in variants:
        expanded = [[]]
        for w in v:
            alts = w.split("|") if "|" in w else [w]
            expanded = [e + [a] for e in expanded for a in alts if a]
        out += expanded
    return out


def _placeholder(w):
    return re.fullmatch(r"[A-Z][A-Z0-9_]*", w) is not None


def parse_command(words, inline, monkeypatch):
    """argparse Namespace of ``diffkit WORDS``, or None for a schematic (a placeholder command);
    raises _ParseError with argparse's message for a command the CLI does not accept."""
    monkeypatch.setattr(argparse.ArgumentParser, "error", _raise)
    words = [w for w in words if w not in ("--help", "-h")]
    if words and _placeholder(words[0]):
        return None
    parser = build_parser()
    for _ in range(len(words) + 2):
        try:
            return parser.parse_args(words)
        except _ParseError as e:
            msg = str(e)
            bad = re.search(r"'([A-Z][A-Z0-9_]*)'", msg)
            if bad and bad.group(1) in words and "invalid choice" not in msg:
                words = [("1" if w == bad.group(1) else w) for w in words]   # a typed placeholder: N, S
                continue
            if inline and "expected one argument" in msg and words and words[-1].startswith("--"):
                words = words + ["1"]                                          # `diffkit text sample --batch-size`
                continue
            if inline and re.search(r"arguments? .*(is|are) required", msg):
                return None                                                    # a partial mention
            raise
    raise AssertionError(f"could not parse {words}")


COMMANDS = _command_texts()


def test_readme_has_commands():
    assert len(COMMANDS) >= 30


def test_every_readme_command_line_parses(monkeypatch):
    problems = []
    for where, text, inline in COMMANDS:
        words = [w.replace("[", "").replace("]", "") for w in shlex.split(text, comments=True)]
        for variant in _variants([w for w in words if w]):
            try:
                parse_command(variant, inline, monkeypatch)
            except _ParseError as e:
                problems.append(f"{where}: diffkit {' '.join(variant)}: {e}")
    assert not problems, "\n".join(problems)


def _parsed_commands(monkeypatch):
    out = []
    for where, text, inline in COMMANDS:
        words = [w.replace("[", "").replace("]", "") for w in shlex.split(text, comments=True)]
        for variant in _variants([w for w in words if w]):
            try:
                ns = parse_command(variant, inline, monkeypatch)
            except _ParseError:
                continue  # reported by test_every_readme_command_line_parses
            if ns is not None:
                out.append((where, ns))
    return out


def test_digit_examples_name_the_digits_true_labels(monkeypatch):
    _, y = digits_tensors("test")
    label = lambda k: int(y[k])  # noqa: E731  (--digit K: image K of the test split)
    cmds = _parsed_commands(monkeypatch)
    problems = []
    for where, ns in cmds:
        if (ns.command == "edit" and ns.digit is not None and ns.source is not None
                and int(ns.source) != label(ns.digit)):
            problems.append(f"{where}: --digit {ns.digit} is a {label(ns.digit)}, not --source {ns.source}")
    inverted = {ns.output: (where, ns.digit) for where, ns in cmds
                if ns.command == "invert" and getattr(ns, "digit", None) is not None}
    pairs = 0
    for where, ns in cmds:
        if ns.command == "sample" and ns.from_inversion in inverted and ns.labels:
            pairs += 1
            src, k = inverted[ns.from_inversion]
            if [int(v) for v in ns.labels.split(",")] == [label(k)]:
                problems.append(f"{where}: --labels {ns.labels} regenerates {src}'s --digit {k} (a {label(k)}) under "
                                "its own label: a reconstruction, not an edit")
    assert pairs >= 1 and not problems, "\n".join(problems)
