"""Tokenizers for text diffusion models: byte-level and character-level (self-contained, saved as
one JSON file), and GPT-2's BPE from transformers when it is available locally (RADD's models
use GPT-2's 50,257 tokens; nothing is downloaded).

All share one small interface: ``vocab_size`` (real tokens V; the mask token is id V),
``encode(text) -> list[int]``, ``decode(ids) -> str``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable

from diffkit.atomic import write_text_atomically

__all__ = ["ByteTokenizer", "CharTokenizer", "gpt2_tokenizer", "load_tokenizer", "save_tokenizer",
           "TOKENIZER_FILE"]

TOKENIZER_FILE = "diffkit_tokenizer.json"


def _ids(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes: V = 256. Decoding replaces invalid byte sequences (and ids >= 256, e.g. the
    mask token) with U+FFFD."""

    kind = "byte"
    vocab_size = 256

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i if 0 <= i < 256 else 0xFF for i in _ids(ids)).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


class CharTokenizer:
    """One id per character of ``alphabet`` (V = len(alphabet)). Characters outside it map to
    ``unk`` if given (a character of the alphabet), with a warning naming how many were replaced,
    else raise."""

    kind = "char"

    def __init__(self, alphabet: str, unk: str | None = None):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError("alphabet must be a non-empty string of distinct characters")
        if unk is not None and unk not in alphabet:
            raise ValueError(f"unk {unk!r} must be a character of the alphabet")
        self.alphabet, self.unk = alphabet, unk
        self._index = {c: i for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        out, unknown = [], []
        for c in text:
            i = self._index.get(c)
            if i is None:
                if self.unk is None:
                    raise ValueError(f"character {c!r} is not in the tokenizer's alphabet (and no unk is set)")
                i = self._index[self.unk]
                unknown.append(c)
            out.append(i)
        if unknown:
            kinds = "".join(dict.fromkeys(unknown))
            warnings.warn(f"{len(unknown)} of {len(text)} character(s) are not in the tokenizer's alphabet and were "
                          f"replaced by {self.unk!r} (the model sees and scores that character instead): "
                          f"{kinds[:20]!r}{'...' if len(kinds) > 20 else ''}", UserWarning, stacklevel=2)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        a = self.alphabet
        return "".join(a[i] if 0 <= i < len(a) else "\ufffd" for i in _ids(ids))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alphabet": self.alphabet, "unk": self.unk}


class _HFTokenizer:
    """Adapter giving a transformers tokenizer the interface above (no special tokens added)."""

    kind = "hf"

    def __init__(self, tok, name: str):
        self.tok, self.name = tok, name

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [i for i in _ids(ids) if 0 <= i < self.vocab_size]
        return self.tok.decode(ids)

    def to_dict(self) -> dict:
        return {"kind": "gpt2", "name": self.name}


_GPT2_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def _local_tokenizer_folder(name: str) -> str:
    """A folder holding ``name``'s tokenizer files: ``name`` itself when it is a folder, else its
    snapshot in the Hugging Face cache, found with ``try_to_load_from_cache`` (a file-system
    lookup). ``from_pretrained(name, local_files_only=True)`` on a repository id still calls
    ``hf_hub_download``, which builds request headers and so fetches a registry from the Hub."""
    if os.path.isdir(name):
        return name
    from huggingface_hub import try_to_load_from_cache

    for fname in _GPT2_FILES:
        hit = try_to_load_from_cache(name, fname)
        if isinstance(hit, str):
            return os.path.dirname(hit)
    raise OSError(f"none of {', '.join(_GPT2_FILES)} is in the Hugging Face cache for {name!r}")


def gpt2_tokenizer(name: str = "gpt2"):
    """GPT-2's tokenizer (V = 50,257) from a folder or the local Hugging Face cache only (nothing
    touches the network); a clear error if absent."""
    try:
        from transformers import GPT2TokenizerFast

        tok = GPT2TokenizerFast.from_pretrained(_local_tokenizer_folder(name), local_files_only=True)
        # transformers 5 returns an empty tokenizer instead of failing when the files are absent
        if len(tok) < 50257:
            raise OSError(f"only {len(tok)} tokens found")
        return _HFTokenizer(tok, name)
    except Exception as e:  # noqa: BLE001 -- any failure means "not available locally"
        raise FileNotFoundError(
            f"GPT-2 tokenizer {name!r} is not available locally ({type(e).__name__}: {e}); put it in the Hugging Face "
            "cache (e.g. `huggingface-cli download gpt2 tokenizer.json vocab.json merges.txt` on a machine with "
            "network) or pass a folder with a diffkit tokenizer") from None


def tokenizer_from_dict(d: dict):
    kind = d.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(d["alphabet"], d.get("unk"))
    if kind == "gpt2":
        return gpt2_tokenizer(d.get("name", "gpt2"))
    raise ValueError(f"unknown tokenizer kind {kind!r}; accepted: 'byte', 'char', 'gpt2'")


def save_tokenizer(tok, folder) -> Path:
    """Write ``folder/diffkit_tokenizer.json`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / TOKENIZER_FILE, json.dumps(tok.to_dict()))
    return folder / TOKENIZER_FILE


def load_tokenizer(spec, vocab_size: int | None = None):
    """``"byte"``, ``"gpt2"``, ``"char:<alphabet>"``, or a folder holding ``diffkit_tokenizer.json``.
    With ``vocab_size`` given, a tokenizer of another size is refused."""
    if not isinstance(spec, (str, os.PathLike)):
        tok = spec
    elif str(spec) == "byte":
        tok = ByteTokenizer()
    elif str(spec) == "gpt2":
        tok = gpt2_tokenizer()
    elif str(spec).startswith("char:"):
        tok = CharTokenizer(str(spec)[5:])
    elif (Path(spec) / TOKENIZER_FILE).is_file():
        tok = tokenizer_from_dict(json.loads((Path(spec) / TOKENIZER_FILE).read_text()))
    else:
        raise ValueError(f"tokenizer must be 'byte', 'gpt2', 'char:<alphabet>' or a folder with {TOKENIZER_FILE}; "
                         f"got {spec!r}")
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model has vocab_size {vocab_size}")
    return tok
