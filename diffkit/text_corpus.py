"""The text corpus of the shipped RADD model: the prose of CPython's ``pydoc_data.topics``.

Every CPython carries ``pydoc_data.topics`` (the help texts of ``help("assert")`` etc.) offline,
but its content changes between releases. To keep training and evaluation deterministic the
corpus is a **snapshot**: the 79 topics of CPython 3.11.7 (464,970 characters, 103 distinct),
concatenated in sorted-key order, stored xz-compressed in ``assets/text-radd/corpus/``
(``pydoc_topics.txt.xz``, with ``SOURCE.md`` naming its origin and licence: the Python
documentation, © Python Software Foundation, PSF License Agreement). Loading checks its
sha256 against :data:`CORPUS_SHA256` and refuses a mismatch. ``diffkit.text_corpus.write_snapshot``
rebuilds it from the running interpreter and refuses an interpreter whose topics differ.

Split (fixed, independent of the model's sequence length): the text is cut into blocks of
:data:`SPLIT_BLOCK` characters; block ``k`` is held out when ``k % HELDOUT_EVERY == HELDOUT_OFFSET``
(6 of 114 blocks, 24,576 characters ≈ 5.3%). The train text is the concatenation of the other
blocks, the held-out text that of the held-out blocks.
"""

from __future__ import annotations

import hashlib
import lzma
import sys
from functools import lru_cache
from pathlib import Path

from diffkit.assets import assets_root
from diffkit.atomic import atomic_path

__all__ = ["CORPUS_SHA256", "CORPUS_PYTHON", "CORPUS_FILE", "SPLIT_BLOCK", "HELDOUT_EVERY", "HELDOUT_OFFSET",
           "CorpusError", "live_topics_text", "corpus_text", "corpus_split", "corpus_alphabet", "write_snapshot",
           "snapshot_path", "unigram_entropy_bits", "BigramModel"]

CORPUS_PYTHON = "3.11.7"
CORPUS_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"
CORPUS_CHARS = 464970
CORPUS_FILE = "pydoc_topics.txt.xz"
SPLIT_BLOCK = 4096
HELDOUT_EVERY = 20
HELDOUT_OFFSET = 10

SOURCE_MD = """# Corpus snapshot: CPython {version} `pydoc_data.topics`

`{file}` is the xz-compressed concatenation, in sorted-key order, of the {n} values of the
dictionary `pydoc_data.topics.topics` of CPython {version} ({chars:,} characters, sha256
`{sha}` of the UTF-8 text). These are the help texts `help("TOPIC")` prints, generated from the
Python documentation.

Source: CPython {version}, `Lib/pydoc_data/topics.py` (https://github.com/python/cpython).
Licence: the Python documentation is © Python Software Foundation and distributed under the
PSF License Agreement (https://docs.python.org/3/license.html).

Rebuild (only on a CPython whose topics match the sha256 above):
`python -c "from diffkit.text_corpus import write_snapshot; write_snapshot()"`
"""


class CorpusError(ValueError):
    """The corpus snapshot is missing or does not match the recorded sha256."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def live_topics_text() -> str:
    """The running interpreter's ``pydoc_data.topics`` concatenated in sorted-key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip pydoc_data
        raise CorpusError(f"this Python has no pydoc_data.topics ({e}); use the snapshot in assets/text-radd/corpus")
    return "".join(topics[k] for k in sorted(topics))


def snapshot_path(root=None) -> Path:
    if root is None:
        root = assets_root() / "text-radd"
    return Path(root) / "corpus" / CORPUS_FILE


REBUILD_CORPUS = 'python -c "from diffkit.text_corpus import write_snapshot; write_snapshot()"'


@lru_cache(maxsize=2)
def _load(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"corpus snapshot {p} not found; rebuild it with `{REBUILD_CORPUS}` on "
                          f"CPython {CORPUS_PYTHON}")
    try:
        text = lzma.decompress(p.read_bytes()).decode("utf-8")
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:  # truncated / not xz / not UTF-8 text
        raise CorpusError(f"corpus snapshot {p} is corrupted (not a complete xz file of UTF-8 text; "
                          f"{type(e).__name__}: {e}); rebuild it with `{REBUILD_CORPUS}` on "
                          f"CPython {CORPUS_PYTHON}") from e
    if _sha(text) != CORPUS_SHA256:
        raise CorpusError(f"corpus snapshot {p} has sha256 {_sha(text)}, expected {CORPUS_SHA256} "
                          f"(CPython {CORPUS_PYTHON} pydoc_data.topics); the file is corrupted or from another release")
    return text


def corpus_text(path=None) -> str:
    """The full corpus (verified against :data:`CORPUS_SHA256`)."""
    return _load(str(snapshot_path() if path is None else Path(path)))


def corpus_split(split: str = "train", path=None) -> str:
    """``"train"`` or ``"heldout"`` text (the fixed block split above)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    text = corpus_text(path)
    blocks = [text[i:i + SPLIT_BLOCK] for i in range(0, len(text), SPLIT_BLOCK)]
    held = [k % HELDOUT_EVERY == HELDOUT_OFFSET for k in range(len(blocks))]
    return "".join(b for b, h in zip(blocks, held) if h == (split == "heldout"))


def corpus_alphabet(path=None) -> str:
    """The sorted distinct characters of the whole corpus (the character tokenizer's alphabet)."""
    return "".join(sorted(set(corpus_text(path))))


def write_snapshot(root=None, *, text: str | None = None) -> Path:
    """Write the compressed snapshot + SOURCE.md from this interpreter's topics (atomically).
    Refuses topics whose sha256 differs from the recorded one."""
    text = live_topics_text() if text is None else text
    if _sha(text) != CORPUS_SHA256:
        raise CorpusError(f"this interpreter's pydoc_data.topics (CPython {sys.version.split()[0]}) has sha256 "
                          f"{_sha(text)}, not the recorded {CORPUS_SHA256} of CPython {CORPUS_PYTHON}; "
                          "the shipped model's corpus cannot be rebuilt from it")
    p = snapshot_path(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    from pydoc_data.topics import topics

    (p.parent / "SOURCE.md").write_text(SOURCE_MD.format(version=CORPUS_PYTHON, file=CORPUS_FILE, n=len(topics),
                                                          chars=len(text), sha=CORPUS_SHA256))
    _load.cache_clear()
    return p


# ------------------------------------------------------------------ sample-quality proxies
def unigram_entropy_bits(text: str) -> float:
    """Entropy of the character frequencies of ``text`` in bits/char."""
    import math
    from collections import Counter

    if not text:
        raise ValueError("text is empty")
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


class BigramModel:
    """Character bigram model with add-``alpha`` smoothing over ``alphabet``, fitted on a text;
    ``perplexity(text)`` = 2^(mean bits per transition)."""

    def __init__(self, text: str, alphabet: str, alpha: float = 0.1):
        import numpy as np

        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.index = {c: i for i, c in enumerate(alphabet)}
        V = len(alphabet)
        counts = np.full((V, V), float(alpha))
        ids = np.array([self.index[c] for c in text])
        np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
        self.logp = np.log2(counts / counts.sum(1, keepdims=True))

    def bits_per_char(self, text: str) -> float:
        import numpy as np

        ids = np.array([self.index[c] for c in text if c in self.index])
        if len(ids) < 2:
            raise ValueError("text needs at least 2 characters of the alphabet")
        return float(-self.logp[ids[:-1], ids[1:]].mean())

    def perplexity(self, text: str) -> float:
        return 2.0 ** self.bits_per_char(text)
