"""The shipped character-level RADD model, its corpus, the text CLI and λ-DCE training."""

from __future__ import annotations

import collections
import json
import lzma
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from diffkit import text_corpus as tc
from helpers import ROOT

ASSET = ROOT / "assets" / "text-radd"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DIFFKIT_ASSETS": str(ROOT / "assets")}


# ------------------------------------------------------------------ corpus
def test_corpus_snapshot_is_verified_and_split_is_fixed():
    text = tc.corpus_text()
    assert len(text) == tc.CORPUS_CHARS
    train, held = tc.corpus_split("train"), tc.corpus_split("heldout")
    assert len(train) + len(held) == len(text)
    # re-interleaving the blocks gives the corpus back: the split is a partition of fixed blocks
    B, it, ih, parts = tc.SPLIT_BLOCK, 0, 0, []
    for k in range(math.ceil(len(text) / B)):
        n = min(B, len(text) - k * B)
        if k % tc.HELDOUT_EVERY == tc.HELDOUT_OFFSET:
            parts.append(held[ih:ih + n])
            ih += n
        else:
            parts.append(train[it:it + n])
            it += n
    assert "".join(parts) == text
    assert 0.04 < len(held) / len(text) < 0.07
    assert len(tc.corpus_alphabet()) == len(set(text)) == 103
    assert abs(tc.unigram_entropy_bits(text) - 4.69) < 0.01  # the issue's ≈ 4.7 bits/char
    with pytest.raises(ValueError, match="split must be"):
        tc.corpus_split("test")


def test_corpus_mismatch_is_refused(tmp_path):
    bad = tmp_path / "corpus" / tc.CORPUS_FILE
    bad.parent.mkdir()
    bad.write_bytes(lzma.compress(tc.corpus_text()[:-1].encode()))
    with pytest.raises(tc.CorpusError, match="sha256"):
        tc.corpus_text(bad)
    with pytest.raises(tc.CorpusError, match="not found"):
        tc.corpus_text(tmp_path / "missing.xz")
    # a truncated or garbage file is refused the same way (it used to raise a raw LZMAError)
    for name, data in (("truncated.xz", lzma.compress(b"x" * 100000)[:40]), ("garbage.xz", b"not xz at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(tc.CorpusError, match=f"corpus snapshot {re.escape(str(tmp_path / name))} is corrupted "
                                                 r".*LZMAError.*rebuild it with `python -c"):
            tc.corpus_text(tmp_path / name)
    with pytest.raises(tc.CorpusError, match="cannot be rebuilt"):
        tc.write_snapshot(tmp_path, text="other topics")
    assert not (tmp_path / "corpus" / "SOURCE.md").exists()


def test_bigram_model_scores_train_text_better_than_shuffled():
    train = tc.corpus_split("train")
    bg = tc.BigramModel(train, tc.corpus_alphabet())
    held = tc.corpus_split("heldout")[:4000]
    shuffled = "".join(held[i] for i in torch.randperm(len(held), generator=torch.Generator().manual_seed(0)))
    # a shuffled text keeps the unigram law, so its bigram perplexity is ≈ 2^(unigram entropy) or worse
    assert bg.perplexity(held) < 2 ** tc.unigram_entropy_bits(held) < bg.perplexity(shuffled)


# ------------------------------------------------------------------ the shipped model
@pytest.fixture(scope="module")
def shipped():
    from diffkit.pipelines.discrete import load_text_pipeline

    assert (ASSET / "model_index.json").is_file(), "assets/text-radd is missing (diffkit text train)"
    pipe = load_text_pipeline(str(ASSET))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_model_is_small_and_matches_corpus(shipped):
    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    assert size <= 10 * 2 ** 20
    assert shipped.tokenizer.vocab_size == shipped.vocab_size == 103
    assert shipped.tokenizer.alphabet == tc.corpus_alphabet()
    assert (ASSET / "README.md").is_file() and (ASSET / "corpus" / "SOURCE.md").is_file()


def test_shipped_model_samples_without_masks(shipped):
    out = shipped(batch_size=2, num_inference_steps=24, prompt=["A list ", "The "], seed=3)
    L = int(shipped.transformer.config.length)
    assert out.sequences.shape == (2, L)
    assert not (out.sequences == shipped.mask_token_id).any()
    assert out.texts[0].startswith("A list ") and out.texts[1].startswith("The ")
    assert all(len(t) == L for t in out.texts)


def test_shipped_model_meets_the_heldout_bound_goal(shipped):
    from diffkit.text_train import heldout_nll_bound

    # 24 of the 192 held-out blocks, 4 λ draws each (the card uses all blocks, 16 draws):
    # the λ-DCE bound is below the 3.0 bits/char goal, far below the unigram
    # entropy (4.71) and the train-split bigram model (3.63).
    r = heldout_nll_bound(shipped.transformer, shipped.tokenizer, draws=4, max_blocks=24, estimator="lambda-dce")
    assert r["blocks"] == 24 and r["chars"] == 24 * int(shipped.transformer.config.length)
    assert r["bits_per_char"] + 3 * r["stderr_bits"] < 3.0, r


def test_card_bound_and_cli_share_the_block_seeding_rule(shipped, tmp_path, capsys):
    """`diffkit text nll` on the first two held-out blocks prints the card estimator's NLL for
    them: both score block k with seed --seed + k (likelihood.blocked_nll)."""
    from diffkit.cli import main
    from diffkit.text_train import heldout_nll_bound

    L = int(shipped.transformer.config.length)
    f = tmp_path / "held.txt"
    f.write_text(tc.corpus_split("heldout")[:2 * L])
    for est in ("lambda-dce", "k-dce"):
        r = heldout_nll_bound(shipped.transformer, shipped.tokenizer, draws=2, max_blocks=2, seed=3, estimator=est)
        assert main(["text", "nll", "--model", str(ASSET), "--file", str(f), "--estimator", est, "--draws", "2",
                     "--seed", "3", "--batch-size", "64"]) == 0
        m = re.search(r": NLL ([0-9.]+) ± [0-9.]+ nats over 256 tokens .*; ([0-9.]+) ± [0-9.]+ bits/char",
                      capsys.readouterr().out)
        assert m and float(m.group(2)) == pytest.approx(r["bits_per_char"], abs=1e-4)
        assert float(m.group(1)) == pytest.approx(r["bits_per_char"] * 2 * L * math.log(2), abs=1e-3)


def test_text_cli_sample_offline():
    r = subprocess.run([sys.executable, "-m", "diffkit.cli", "text", "sample", "--steps", "64", "--n", "1",
                        "--prompt", "A list "], capture_output=True, text=True, env=ENV, cwd="/", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n", 1)[1].startswith("A list ")
    assert re.search(r"NFE \(forward rows/sample\) \d+", r.stderr)


def test_text_cli_nll(tmp_path):
    from diffkit.cli import main

    held = tc.corpus_split("heldout")[:256]  # two full blocks of the model's length (128)
    f = tmp_path / "held.txt"
    f.write_text(held)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["text", "nll", "--model", str(ASSET), "--file", str(f), "--draws", "4"]) == 0
    m = re.search(r"NLL [0-9.]+ ± ([0-9.]+) nats over 256 tokens .* = ([0-9.]+) nats/token", buf.getvalue())
    assert m, buf.getvalue()
    se, nll = float(m.group(1)) / 256, float(m.group(2))
    # the strongest count baseline computed here: an add-one character bigram fitted on the training split
    train = tc.corpus_split("train")
    V = len(tc.corpus_alphabet())
    uni, bi = collections.Counter(train), collections.Counter(zip(train, train[1:]))
    bigram = -sum(math.log((bi[a, b] + 1) / (uni[a] + V)) for a, b in zip(held, held[1:])) / (len(held) - 1)
    assert nll < bigram - 0.3, (nll, bigram)  # the model's bound beats it by a margin (measured: 1.74 ± 0.33 vs 2.54)
    # and agrees with the asset's recorded held-out bound (2.545 bits/char over 24,576 characters)
    recorded = json.loads((ASSET / "evaluation.json").read_text())["heldout"]
    rec_nats, rec_se = recorded["bits_per_char"] * math.log(2), recorded["stderr_bits"] * math.log(2)
    assert abs(nll - rec_nats) <= 3 * math.hypot(se, rec_se), (nll, se, rec_nats)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["text", "nll", "--model", str(tmp_path / "nope"), "--text", "x"]) == 1
    assert "not found" in err.getvalue()
    # characters outside the alphabet are scored as its unk character (a space): said, with their count
    with pytest.warns(UserWarning, match=r"2 of 5 character\(s\) are not in the tokenizer's alphabet and were "
                                         r"replaced by ' '"), contextlib.redirect_stdout(io.StringIO()):
        assert main(["text", "nll", "--model", str(ASSET), "--text", "a€b€c", "--draws", "2"]) == 0


# ------------------------------------------------------------------ λ-DCE training
def test_lambda_dce_loss_is_the_bound_estimator():
    """E over λ of the training loss = the λ-DCE NLL bound of likelihood.lambda_dce_nll (same model)."""
    from diffkit.likelihood import lambda_dce_nll
    from diffkit.models.radd import tiny_radd_transformer
    from diffkit.text_train import LambdaDCELoss

    model = tiny_radd_transformer(vocab_size=16, hidden_size=32, n_heads=2, n_blocks=1, length=24)
    x = torch.randint(0, 16, (24,), generator=torch.Generator().manual_seed(0))
    B = 512
    loss = LambdaDCELoss(16, B, seed=1)
    idx = torch.arange(B)
    with torch.no_grad():
        mc = float(loss(model, x.expand(B, -1), idx, 0))
    ref = lambda_dce_nll(model, x, 512, seed=2, batch_size=128)
    assert abs(mc - ref.per_token) < 4 * (ref.stderr / 24) + 0.02
    lam, mask = loss.masks(x.expand(B, -1), idx)
    assert lam.min() > 0 and lam.max() < 1
    assert ((lam * B).floor() == torch.arange(B)).all()  # stratified: one λ per stratum
    assert abs(float(mask.float().mean()) - 0.5) < 0.02


def test_tiny_train_run_decreases_loss_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from diffkit.cli import main
    from diffkit.text_train import train_text_model

    args = ["text", "train", "--preset", "tiny", "--batch-size", "16", "--lr", "1e-2", "--warmup-steps", "2",
            "--checkpoint-every", "10", "--no-progress"]
    assert main(args + ["--output", str(tmp_path / "a"), "--run-dir", str(tmp_path / "ra"), "--max-steps", "40"]) == 0
    log = (tmp_path / "ra" / "loss_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in log]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.3
    # 20 steps, then resume to 40: the same weights as the uninterrupted run
    kw = dict(preset="tiny", batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=10, progress=False)
    train_text_model(tmp_path / "b", max_steps=20, run_dir=tmp_path / "rb", **kw)
    train_text_model(tmp_path / "b", max_steps=40, run_dir=tmp_path / "rb", resume="latest", **kw)
    wa = load_file(str(tmp_path / "a" / "transformer" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    from diffkit.pipelines.discrete import load_text_pipeline

    pipe = load_text_pipeline(str(tmp_path / "b"))
    out = pipe(batch_size=1, num_inference_steps=8, seed=0)
    assert len(out.texts[0]) == 32 and not (out.sequences == pipe.mask_token_id).any()
