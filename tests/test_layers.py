"""The package's layers, read from the source with ``ast`` (nothing is imported).

    L0 base  <-  L1 method math  <-  L2 pipelines & driver  <-  L3 trainers
             <-  L4 metrics, evaluators, reports  <-  L5 commands, benchmarks

A module may import modules of its own layer or of lower layers, never a higher one. Also:
a command module imports no other command module (only the private ``_outputs`` /
``_training`` helpers); there are no import cycles among the project's modules (counting
function-local imports); the project's own modules are imported at module top (a
function-local import is for a third-party package: a heavy optional one, or torch inside a
CLI command); no relative import climbs out of its package (``from ..samplers``).

``LAYERS`` is the one table of who sits where; a module missing from it fails
``test_every_module_has_a_layer`` (add it to the table, in the layer it belongs to).
docs/ARCHITECTURE.md draws the same table for readers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT


#: source folder -> the package it is installed as (pyproject.toml's package-dir)
SOURCES = {"diffkit": "diffkit", "samplers": "diffkit.samplers", "distill": "diffkit.distill",
           "benchmarks": "benchmarks"}

BASE, METHOD, PIPELINE, TRAINER, METRIC, COMMAND = range(6)
LAYER_NAMES = ["L0 base", "L1 method math", "L2 pipelines/driver", "L3 trainers", "L4 metrics/evaluators/reports",
               "L5 commands/benchmarks"]

#: module -> layer. ``pkg.*`` covers the package and every module below it; an exact name wins
#: over a pattern, a longer pattern over a shorter one.
LAYERS = {
    # L0 base: no knowledge of any method
    "diffkit": BASE,
    "diffkit.assets": BASE,
    "diffkit.atomic": BASE,
    "diffkit.attention": BASE,
    "diffkit.checks": BASE,
    "diffkit.conditioning": BASE,
    "diffkit.data": BASE,
    "diffkit.denoisers": BASE,
    "diffkit.distributed": BASE,
    "diffkit.images": BASE,
    "diffkit.numerics": BASE,
    "diffkit.schedules": BASE,
    "diffkit.seeding": BASE,
    "diffkit.text_corpus": BASE,
    "diffkit.threads": BASE,
    "diffkit.weights": BASE,
    "diffkit.versions": BASE,
    "diffkit.models.*": BASE,
    # L1 method math: pure functions, schedulers, losses, score analysis
    "diffkit.samplers.*": METHOD,
    "diffkit.distill": METHOD,  # the package index (lazy exports only)
    "diffkit.distill.losses": METHOD,
    "diffkit.distill.generator": METHOD,
    "diffkit.distill.config": METHOD,  # settings and their checks (no torch)
    "diffkit.distill.path": METHOD,  # Stage-1 path records: manifest, nodes, boundaries
    "diffkit.likelihood": METHOD,
    "diffkit.analysis.*": METHOD,
    # L2 pipelines and the sampling driver
    "diffkit.pipelines.*": PIPELINE,
    "diffkit.registry": PIPELINE,
    "diffkit.sampling": PIPELINE,
    # L3 trainers (take evaluators as callables; never import metrics)
    "diffkit.train": TRAINER,
    "diffkit.text_train": TRAINER,
    "diffkit.distill.disback": TRAINER,
    "diffkit.distill.stage1": TRAINER,
    "diffkit.run_loop": TRAINER,  # the one run loop both trainers use
    "diffkit.run_state": TRAINER,  # checkpoints, EMA, RNG state, run folders
    # L4 metrics, evaluators, reports
    "diffkit.metrics.*": METRIC,
    "diffkit.analysis.report": METRIC,
    "diffkit.testing": METRIC,
    # L5 command line and benchmarks
    "diffkit.cli": COMMAND,
    "diffkit.commands.*": COMMAND,
    "benchmarks.*": COMMAND,
}

#: command modules every command may import
SHARED_COMMAND_HELPERS = {"diffkit.commands._outputs", "diffkit.commands._training", "diffkit.commands._demo"}
#: modules that may import the project's own modules inside functions: the CLI, so that
#: ``diffkit --help`` does not load torch and every method
CLI_MODULES = ("diffkit.cli", "diffkit.commands.*")
#: light indexes the CLI reads at start-up (argument choices, folder detection), each allowed to import
#: ONE heavier own module inside the function that needs it, so ``diffkit --help`` stays free of torch
LIGHT_INDEXES = {
    # load_pipeline's UNet2DModel-folder branch builds a ClassConditionalPipeline (imports diffusers)
    ("diffkit.pipelines", "diffkit.pipelines.class_conditional"),
    # the method table gives `--method` choices; load_record needs the record base (imports torch)
    ("diffkit.samplers.inversion_methods", "diffkit.samplers.inversion_base"),
}


def _match(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return name == pattern[:-2] or name.startswith(pattern[:-1])
    return name == pattern


def layer_of(name: str, table=LAYERS):
    """The layer of module ``name``, or None when the table has no entry for it."""
    if name in table:
        return table[name]
    best = max((p for p in table if p.endswith(".*") and _match(name, p)), key=len, default=None)
    return None if best is None else table[best]


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    path: str  # its file, relative to the root
    line: int
    target: str  # the project module imported (the most specific one named)
    local: bool  # inside a function
    level: int  # relative-import level (0: absolute)
    text: str


def discover(root: Path = ROOT) -> dict:
    """module name -> file, for every module of the project's sources under ``root``."""
    modules = {}
    for folder, package in SOURCES.items():
        base = root / folder
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package] + parts)] = f
    return modules


def _resolve(name: str, known) -> str | None:
    """The longest prefix of the dotted ``name`` that is a known module."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in known:
            return ".".join(parts[:k])
    return None


def _scoped_imports(tree):
    """(node, inside_a_function) for every import statement of the tree."""
    stack = [(tree, False)]
    while stack:
        node, local = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, local
            stack.append((child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))))


def imports(root: Path = ROOT, modules: dict | None = None) -> list:
    """Every import of a project module by a project module, with relative imports resolved."""
    modules = discover(root) if modules is None else modules
    out = []
    for name, path in modules.items():
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        is_pkg = path.name == "__init__.py"
        rel = str(path.relative_to(root))
        for node, local in _scoped_imports(tree):
            text = ast.get_source_segment(source, node) or ""
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _resolve(alias.name, modules)
                    if target:
                        out.append(Import(name, rel, node.lineno, target, local, 0, text))
                continue
            if node.level:
                package = name.split(".") if is_pkg else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}", modules) if f"{base}.{alias.name}" in modules else \
                    _resolve(base, modules)
                if target:
                    out.append(Import(name, rel, node.lineno, target, local, node.level, text))
    return sorted(set(out), key=lambda i: (i.path, i.line, i.target))


def _where(imp: Import) -> str:
    return f"{imp.path}:{imp.line}: {imp.text.splitlines()[0] if imp.text else imp.target}"


def unmapped(modules, table=LAYERS) -> list:
    return sorted(m for m in modules if layer_of(m, table) is None)


def upward(imps, table=LAYERS) -> list:
    bad = []
    for imp in imps:
        a, b = layer_of(imp.source, table), layer_of(imp.target, table)
        if a is not None and b is not None and b > a:
            bad.append(f"{_where(imp)}  ({imp.source} is {LAYER_NAMES[a]}; {imp.target} is {LAYER_NAMES[b]})")
    return bad


def command_to_command(imps) -> list:
    def is_command(m):
        return m.startswith("diffkit.commands.")

    return [f"{_where(i)}  (command {i.source} imports command {i.target})" for i in imps
            if is_command(i.source) and is_command(i.target) and i.target not in SHARED_COMMAND_HELPERS
            and i.target != i.source]


def cycles(imps) -> list:
    """Strongly connected components (more than one module) of the import graph, as lists."""
    graph = {}
    for i in imps:
        if i.source != i.target:
            graph.setdefault(i.source, set()).add(i.target)
            graph.setdefault(i.target, set())
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):  # Tarjan, iterative over each node's successors
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe_cycle(comp, imps) -> str:
    members = set(comp)
    edges = [_where(i) for i in imps if i.source in members and i.target in members and i.source != i.target]
    return " <-> ".join(comp) + "\n      " + "\n      ".join(sorted(set(edges)))


def local_own_imports(imps) -> list:
    return [f"{_where(i)}  (inside a function in {i.source})" for i in imps
            if i.local and not any(_match(i.source, p) for p in CLI_MODULES)
            and (i.source, i.target) not in LIGHT_INDEXES]


def climbing_relative(imps) -> list:
    return [f"{_where(i)}  (relative import {i.level} levels up; write `{i.target}` in full)" for i in imps
            if i.level > 1]


# ----------------------------------------------------------------------------------------------
MODULES = discover()
IMPORTS = imports(ROOT, MODULES)


def _fail(what: str, found: list):
    if found:
        pytest.fail(f"{len(found)} {what}:\n  " + "\n  ".join(found), pytrace=False)


def test_every_module_has_a_layer():
    _fail("modules without a layer in tests/test_layers.py LAYERS", unmapped(MODULES))


def test_no_upward_imports():
    _fail("imports of a higher layer", upward(IMPORTS))


def test_commands_do_not_import_commands():
    _fail("command-to-command imports", command_to_command(IMPORTS))


def test_no_import_cycles():
    _fail("import cycles", [_describe_cycle(c, IMPORTS) for c in cycles(IMPORTS)])


def test_own_modules_imported_at_module_top():
    _fail("function-local imports of the project's own modules", local_own_imports(IMPORTS))


def test_no_relative_imports_out_of_a_package():
    _fail("relative imports that climb out of their package", climbing_relative(IMPORTS))


def test_the_checks_catch_what_they_should(tmp_path):
    """The checker itself, on a small made-up tree: each rule finds its one planted violation."""
    files = {
        "diffkit/__init__.py": "",
        "diffkit/schedules.py": "import diffkit.commands.sample\n",  # L0 -> L5
        "diffkit/commands/__init__.py": "",
        "diffkit/commands/_outputs.py": "",
        "diffkit/commands/sample.py": "from diffkit.commands import _outputs\nfrom diffkit.commands.fid import x\n",
        "diffkit/commands/fid.py": "def run():\n    from diffkit import metrics\n",  # allowed: a CLI module
        "diffkit/metrics/__init__.py": "def f():\n    from diffkit.pipelines import a\n",  # local own import
        "diffkit/pipelines/__init__.py": "from ..samplers import bdia\n",  # climbs out
        "diffkit/pipelines/a.py": "from . import b\n",
        "diffkit/pipelines/b.py": "def g():\n    from diffkit.pipelines import a\n",  # cycle a <-> b
        "diffkit/mystery.py": "import os\n",  # not in the table
        "samplers/__init__.py": "",
        "samplers/bdia.py": "import torch\n",
        "distill/__init__.py": "",
        "benchmarks/x.py": "from diffkit.metrics import f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    mods = discover(tmp_path)
    imps = imports(tmp_path, mods)
    assert unmapped(mods) == ["diffkit.mystery"]
    up = upward(imps)
    assert len(up) == 1 and "diffkit/schedules.py:1" in up[0] and "diffkit.commands.sample is L5" in up[0]
    cc = command_to_command(imps)
    assert len(cc) == 1 and "diffkit.commands.fid" in cc[0]
    assert cycles(imps) == [["diffkit.pipelines.a", "diffkit.pipelines.b"]]
    local = local_own_imports(imps)
    assert sorted(x.split(":")[0] for x in local) == ["diffkit/metrics/__init__.py", "diffkit/pipelines/b.py"]
    climb = climbing_relative(imps)
    assert len(climb) == 1 and "diffkit.samplers.bdia" in climb[0]
