"""The shipped documentation stands on its own: its relative links resolve, and neither the
docs nor the code cite documents outside the repository (a private spec, a machine path)."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: citations of documents that are not shipped: "spec §3", "the project spec", "radd.md §2", a machine path
OUTSIDE = re.compile(r"\bspec §|\b[Tt]he (?:project )?spec\b|\b[a-z_]+\.md §|/work/(?:main|shared|wt)\b"
                     r"|\bHELPERS\.md\b")
SOURCES = ["diffkit", "samplers", "distill", "benchmarks", "examples", "docs"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def test_no_references_to_documents_outside_the_repository():
    found = []
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    for f in sorted(files):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, f"{len(found)} references to unshipped documents (cite the paper instead):\n  " + \
        "\n  ".join(found)
