"""DiscreteDiffusionPipeline: the per-row cache, NFE accounting and law, prompts/infill, any-order
AR, the no-mask property, errors, save/load, the CLI and the example."""

import io
import itertools
import json
import math
import re
import statistics
import sys
import warnings

import pytest
import torch

from diffkit.cli import main
from diffkit.models.radd import tiny_radd_transformer
from diffkit.models.tokenizers import CharTokenizer
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline
from diffkit.samplers.absorbing import expected_forward_calls, expected_nfe
from diffkit.samplers.radd import RADDScheduler

V = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def model():
    return tiny_radd_transformer(vocab_size=V, hidden_size=16, n_heads=2, n_blocks=1, length=32)


@pytest.fixture(scope="module")
def pipe(model):
    p = DiscreteDiffusionPipeline.from_model(model, CharTokenizer("abcdefghijklmnopqrstuvwx"))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("n,batch", [(64, 96), (256, 32), (1024, 24)])  # >= 4 standard errors in 2%
def test_nfe_law_tiny_model(n, batch):
    """Acceptance: l = 128, mean NFE within 2% of n(1 - (1 - 1/n)^l) with a tiny random model, both
    as steps with a change (the paper's count) and as forward rows per sample (the cost; rows are
    re-run lazily, before the next step that reveals something, so never more than the official
    sampler's 1 + Σ_{i<n-1}(1 - (1 - q_i)^l))."""
    model = tiny_radd_transformer(vocab_size=16, hidden_size=16, n_heads=2, n_blocks=1, length=128, seed=3)
    pipe = DiscreteDiffusionPipeline.from_model(model)
    out = pipe(batch_size=batch, num_inference_steps=n, seed=n, output_type="ids")
    law = expected_nfe(n, 128)
    assert out.nfe_changes == pytest.approx(law, rel=0.02)
    assert out.nfe == pytest.approx(law, rel=0.02)
    assert out.nfe <= expected_forward_calls(pipe.scheduler.psis, 128) * 1.02
    assert (out.nfe_per_sample <= out.changes_per_sample + 1).all()
    assert out.forward_calls <= n


def test_cached_equals_uncached_batch1_and_saves_rows(pipe):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = pipe(batch_size=1, num_inference_steps=256, generator=g1, use_cache=True)
    b = pipe(batch_size=1, num_inference_steps=256, generator=g2, use_cache=False)
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert b.nfe == 256 and a.nfe < 0.5 * b.nfe
    assert a.nfe == a.forward_calls == a.nfe_changes  # batch 1: one call per step with a change


def test_cached_equals_uncached_batch_with_same_row_grouping(pipe):
    kw = dict(batch_size=3, num_inference_steps=96, seed=11, forward_batch_size=1)
    a, b = pipe(use_cache=True, **kw), pipe(use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert (a.nfe_per_sample < b.nfe_per_sample).all()


def test_rows_do_not_depend_on_the_batch(pipe):
    one = pipe(batch_size=1, num_inference_steps=40, seed=3, forward_batch_size=1).sequences
    three = pipe(batch_size=3, num_inference_steps=40, seed=3, forward_batch_size=1).sequences
    assert torch.equal(three[0], one[0])


def test_row_k_is_the_same_for_any_batch_size_at_the_api(pipe):
    """Row k depends only on (seed, k): a batch of rows 0..5 equals the same rows drawn in chunks of
    4 + 2 and of 1 (``row_indices`` = their global indices), cached or not, and a batch of one at
    row 0 is the default batch of one. Checked for the two-stage draw (float64 and float32 token
    draws) and for the random any-order path."""
    for extra, sched in (({}, {}), ({}, dict(precision="float32")), (dict(order="random", seq_len=12), {})):
        if sched:
            pipe.scheduler = RADDScheduler.from_config(pipe.scheduler.config, **sched)
        kw = dict(num_inference_steps=12, seed=7, output_type="ids", **extra)
        full = pipe(batch_size=6, **kw).sequences
        fours = torch.cat([pipe(batch_size=4, row_indices=range(0, 4), **kw).sequences,
                           pipe(batch_size=2, row_indices=[4, 5], use_cache=False, **kw).sequences])
        ones = torch.cat([pipe(batch_size=1, row_indices=[k], **kw).sequences for k in range(6)])
        assert torch.equal(fours, full) and torch.equal(ones, full), extra or sched
        assert torch.equal(pipe(batch_size=1, **kw).sequences, full[:1])
        rev = pipe(batch_size=3, row_indices=torch.tensor([5, 3, 1]), **kw).sequences  # any order of rows
        assert torch.equal(rev, full[[5, 3, 1]])
    pipe.scheduler = RADDScheduler.from_config(pipe.scheduler.config, precision="float64")


def test_batch_size_and_row_indices_errors(pipe):
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 or None, got"):
            pipe(batch_size=bad, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"row_indices must hold one index per row \(2\), got 3"):
        pipe(batch_size=2, row_indices=[0, 1, 2])
    with pytest.raises(ValueError, match=r"row_indices must be integers >= 0, got \[1, -1\]"):
        pipe(batch_size=2, row_indices=[1, -1])
    with pytest.raises(ValueError, match="pass either generator or row_indices"):
        pipe(batch_size=1, row_indices=[3], generator=torch.Generator().manual_seed(0))


def test_no_mask_token_in_any_output(pipe):
    """Property: whatever the strategy, temperature, filters, final rule, precision or prompt, the
    output holds real tokens only, and fixed tokens are kept."""
    mask = pipe.mask_token_id
    settings = itertools.product([None, 0.0, 0.7, 1.5], [None, 1, 5], [None, 0.05, 0.9], ["sample", "argmax"])
    for k, (temp, top_k, top_p, final) in enumerate(settings):
        if k % 3:  # a deterministic third of the grid keeps this fast; every value still appears
            continue
        pipe.scheduler = RADDScheduler.from_config(pipe.scheduler.config, final=final,
                                                   precision="float32" if k % 2 else "float64",
                                                   method="euler" if k % 4 else "tweedie")
        prompt = [[1, 2, 3], [], [4] * 10][k % 3]
        out = pipe(batch_size=2, seq_len=16, num_inference_steps=[1, 3, 40][k % 3],
                   prompt=[prompt, [5]], suffix=[[6, 7], []], temperature=temp, top_k=top_k, top_p=top_p,
                   seed=k, output_type="ids")
        assert (out.sequences != mask).all() and (out.sequences < V).all()
        assert out.sequences[0, :len(prompt)].tolist() == prompt and out.sequences[0, -2:].tolist() == [6, 7]
        assert out.sequences[1, 0] == 5
    for order in ("forward", "backward", "random"):
        out = pipe(batch_size=2, seq_len=12, prompt="ab", order=order, seed=1, output_type="ids")
        assert (out.sequences != mask).all() and out.sequences[:, :2].tolist() == [[0, 1], [0, 1]]
    pipe.scheduler = RADDScheduler.from_config(pipe.scheduler.config, final="sample", precision="float64",
                                               method="tweedie")


def test_prompts_of_different_lengths_and_infill_template(pipe):
    out = pipe(prompt=["abc", "abcdefgh"], suffix="xw", seq_len=20, num_inference_steps=8, seed=0)
    assert out.texts[0].startswith("abc") and out.texts[1].startswith("abcdefgh")
    assert all(t.endswith("xw") and len(t) == 20 for t in out.texts)
    assert out.num_generated.tolist() == [15, 10]
    tmpl = torch.full((2, 10), pipe.mask_token_id)
    tmpl[:, 3], tmpl[1, 7] = 9, 2  # fixed tokens anywhere
    out = pipe(input_ids=tmpl, num_inference_steps=5, seed=0, output_type="ids")
    assert (out.sequences[:, 3] == 9).all() and out.sequences[1, 7] == 2
    assert out.num_generated.tolist() == [9, 8]


def test_any_order_forward_greedy_equals_manual_ar_loop(pipe, model):
    L = 10
    out = pipe(batch_size=1, seq_len=L, prompt="ab", order="forward", temperature=0.0, output_type="ids")
    x = torch.full((1, L), model.mask_token_id)
    x[0, :2] = torch.tensor([0, 1])
    with torch.no_grad():
        for j in range(2, L):
            x[0, j] = model(x)[0, j, :V].argmax()
    assert torch.equal(out.sequences, x)
    assert out.num_steps == L - 2 and out.nfe == L - 2  # one position per step, a full call each


def test_time_conditioned_models_are_never_cached():
    class TimeNet(torch.nn.Module):
        time_conditioned, mask_token_id = True, 5

        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, ids, total_noise):
            self.seen.append(float(total_noise[0]))
            return torch.zeros(*ids.shape, 6)

    net = TimeNet()
    pipe = DiscreteDiffusionPipeline(net, RADDScheduler(mask_token_id=5))
    out = pipe(batch_size=2, seq_len=8, num_inference_steps=50, use_cache=True, output_type="ids")
    assert out.nfe == 50 and len(net.seen) == 50
    assert net.seen == sorted(net.seen, reverse=True)  # σ̄(t) decreasing along the grid


def test_errors(pipe):
    too_long = r"prompt \(30 tokens\) \+ suffix \(5 tokens\) of row 0 is longer than seq_len=32"
    with pytest.raises(ValueError, match=too_long):
        pipe(prompt=[0] * 30, suffix=[1] * 5)
    with pytest.raises(ValueError, match=f"prompt \\(row 1\\) contains the mask token id {V}"):
        pipe(prompt=[[1], [2, V]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pipe(prompt=[[1, 99]])
    with pytest.raises(ValueError, match="input_ids holds ids outside"):
        pipe(input_ids=torch.tensor([[1, V + 3]]))
    with pytest.raises(ValueError, match="batch_size=3 but 2 prompts were given"):
        pipe(batch_size=3, prompt=["a", "b"])
    with pytest.raises(ValueError, match="character 'Z' is not in the tokenizer's alphabet"):
        pipe(prompt="Z")
    with pytest.raises(ValueError, match="order must be one of"):
        pipe(order="sideways")
    with pytest.raises(ValueError, match="order must be a permutation"):
        pipe(seq_len=4, order=[0, 0, 1, 2])
    with pytest.raises(ValueError, match="top_p must be in"):
        pipe(top_p=0.0)
    with pytest.raises(ValueError, match="output_type must be 'text' or 'ids'"):
        pipe(output_type="pil")
    bad = DiscreteDiffusionPipeline(pipe.transformer, RADDScheduler())
    with pytest.raises(ValueError, match="scheduler mask_token_id 50257 != model mask id 24"):
        bad()


def test_save_and_load_with_tokenizer(pipe, tmp_path):
    from diffkit.pipelines import load_pipeline

    pipe.save_pretrained(tmp_path / "p")
    again = load_pipeline(tmp_path / "p")
    assert isinstance(again, DiscreteDiffusionPipeline) and isinstance(again.scheduler, RADDScheduler)
    assert again.tokenizer.alphabet == pipe.tokenizer.alphabet
    a = pipe(batch_size=2, num_inference_steps=20, seed=4)
    b = again(batch_size=2, num_inference_steps=20, seed=4)
    assert a.texts == b.texts


def test_cli_text_sample_and_nll(tmp_path, capsys):
    out = tmp_path / "s.txt"
    assert main(["text", "sample", "--model", "tiny", "--steps", "12", "--n", "2", "--length", "16",
                 "--prompt", "Hi", "--top-k", "20", "--output", str(out)]) == 0
    cap = capsys.readouterr()
    assert "--- sample 1 ---" in cap.out and "NFE" in cap.err and out.read_text().startswith("Hi")
    assert main(["text", "nll", "--model", "tiny", "--text", "hello", "--draws", "8"]) == 0
    assert "k-dce: NLL" in capsys.readouterr().out  # the default estimator
    assert main(["text", "nll", "--model", "tiny", "--text", "hello", "--estimator", "ar-forward"]) == 0
    assert "ar-forward: NLL" in capsys.readouterr().out
    assert main(["text", "sample", "--model", str(tmp_path / "none")]) == 1
    assert "model folder" in capsys.readouterr().err


def _cli_sample(capsys, *extra):
    rc = main(["text", "sample", "--model", "tiny", "--steps", "8", "--n", "6", "--length", "16", "--seed", "3",
               *extra])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def test_cli_text_sample_rows_do_not_depend_on_batch_size(capsys):
    """Row k of ``--n 6`` is the same for --batch-size 1, 4 and 6 (and the default, all rows)."""
    ref = _cli_sample(capsys, "--batch-size", "6")
    assert ref.count("--- sample ") == 6
    assert _cli_sample(capsys) == ref
    assert _cli_sample(capsys, "--batch-size", "4") == ref
    assert _cli_sample(capsys, "--batch-size", "1", "--no-cache") == ref


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_cli_text_sample_rejects_a_bad_batch_size(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["text", "sample", "--model", "tiny", "--steps", "2", "--n", "2", "--batch-size", value])
    assert e.value.code == 2
    assert f"argument --batch-size: must be an integer >= 1, got {value!r}" in capsys.readouterr().err


# ------------------------------------------------------------------ text nll: blocks, seeds, error bar
def _cli_nll(capsys, *args):
    rc = main(["text", "nll", "--model", "tiny", *args])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.match(r"(\S+): NLL ([0-9.]+) ± ([0-9.]+) nats over (\d+) tokens", out)
    assert m, out
    return m.group(1), float(m.group(2)), float(m.group(3)), out


def test_cli_text_nll_scores_block_k_with_seed_plus_k(capsys):
    """Block k of the text gets seed --seed + k (likelihood.block_seed): a 2-block text's printed
    NLL is the sum of the single-block results at seeds s and s + 1, its ± their quadrature sum.
    (One seed for every block drew the same λ / k and masks in each block.)"""
    from diffkit.likelihood import k_dce_nll, lambda_dce_nll
    from diffkit.pipelines.discrete import load_text_pipeline

    tiny = load_text_pipeline("tiny")
    L = int(tiny.transformer.config.length)
    text = ("masked diffusion models " * 8)[:2 * L - 7]  # two blocks, the second shorter
    ids = tiny.tokenizer.encode(text)
    for name, fn in (("k-dce", k_dce_nll), ("lambda-dce", lambda_dce_nll)):
        a = fn(tiny.transformer, ids[:L], 8, seed=7, batch_size=16)
        b = fn(tiny.transformer, ids[L:], 8, seed=8, batch_size=16)
        got = _cli_nll(capsys, "--text", text, "--estimator", name, "--draws", "8", "--seed", "7")
        assert got[3].startswith(f"{name}: NLL {a.nll + b.nll:.3f} ± {math.hypot(a.stderr, b.stderr):.3f} nats"), got
        assert "(2 block(s) of <= 64, 8 draws per block)" in got[3]


def test_cli_text_nll_error_bar_is_honest_over_seeds(capsys):
    """k-DCE over 32 seeds (spaced by more than the 12 blocks, so no two runs share a block's draws):
    the printed ± (root mean square over the runs) is within [0.7, 3] x the seed-to-seed standard
    deviation of the printed NLL -- conservative is acceptable, optimistic is not. The text repeats
    one 64-character line (the tiny model's length), the case where a shared seed makes the 12
    blocks' errors fully coherent (the standard deviation sqrt(12) x the printed ±)."""
    line = "the quick brown fox jumps over the lazy dog; pack my box with 6\n"
    assert len(line) == 64
    text = line * 12
    nll, se = [], []
    for j in range(32):
        _, v, s, _ = _cli_nll(capsys, "--text", text, "--estimator", "k-dce", "--draws", "8", "--seed", str(100 * j))
        nll.append(v)
        se.append(s)
    sd = statistics.stdev(nll)
    rms = math.sqrt(statistics.fmean(s * s for s in se))
    assert 0.7 * sd <= rms <= 3 * sd, (rms, sd)


def test_cli_text_nll_defaults_to_k_dce_and_prints_bits_per_char(capsys):
    text = "hello, world"
    name, nll, _, out = _cli_nll(capsys, "--text", text, "--draws", "8")
    assert name == "k-dce"
    m = re.search(r"; ([0-9.]+) ± ([0-9.]+) bits/char over 12 characters", out)
    assert m and float(m.group(1)) == pytest.approx(nll / len(text) / math.log(2), abs=2e-4), out


# ------------------------------------------------------------------ silent coercions, damaged files, progress
def test_tokenizer_must_match_the_model_vocabulary(model):
    """A 10-character tokenizer on a 24-token model used to decode sampled ids >= 10 to U+FFFD."""
    msg = r"tokenizer has 10 tokens but the model has vocab_size 24"
    with pytest.raises(ValueError, match=msg):
        DiscreteDiffusionPipeline.from_model(model, CharTokenizer("abcdefghij"))
    with pytest.raises(ValueError, match=msg):
        DiscreteDiffusionPipeline(model, RADDScheduler(mask_token_id=V), CharTokenizer("abcdefghij"))


def test_seq_len_beyond_the_trained_length_warns(pipe):
    with pytest.warns(UserWarning, match=r"sequence length 40 exceeds the model's trained length 32 "
                                         r"\(config.length\): 8 position\(s\) per row"):
        out = pipe(batch_size=1, seq_len=40, num_inference_steps=4, seed=0)
    assert out.sequences.shape == (1, 40)
    with pytest.warns(UserWarning, match="sequence length 36 exceeds"):
        pipe(input_ids=torch.full((1, 36), V), num_inference_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(batch_size=1, seq_len=32, num_inference_steps=4)


def test_shortened_tokenizer_alphabet_is_refused(pipe, tmp_path):
    """An edited tokenizer file (3 characters dropped) used to load silently and shift every id."""
    from diffkit.assets import AssetError
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.discrete import load_text_pipeline

    folder = tmp_path / "text-radd"  # named like the shipped asset: the error gives its rebuild command
    pipe.save_pretrained(folder)
    f = folder / "tokenizer" / "diffkit_tokenizer.json"
    d = json.loads(f.read_text())
    d["alphabet"] = d["alphabet"][:-3]
    f.write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        load_text_pipeline(folder)
    msg = str(e.value)
    assert str(f) in msg and "tokenizer has 21 tokens but the model has vocab_size 24" in msg
    assert ("rebuild the character-level RADD text model with "
            "`diffkit text train --output assets/text-radd --replace-asset`") in msg
    with pytest.raises(AssetError, match="tokenizer has 21 tokens"):
        load_pipeline(folder)


class _TTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,flag,shown", [(_TTY, [], True), (_TTY, ["--no-progress"], False),
                                                (io.StringIO, [], False)])
def test_cli_text_sample_progress_bar(monkeypatch, stream, flag, shown):
    """A tqdm bar on stderr over each batch's steps, off with --no-progress or when stderr is not a TTY."""
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["text", "sample", "--model", "tiny", "--steps", "8", "--n", "3", "--batch-size", "2",
                 "--length", "16", *flag]) == 0
    assert ("samples 1-2 of 3:" in err.getvalue() and "sample 3 of 3:" in err.getvalue()) == shown, err.getvalue()
    assert "3 samples, 8 steps" in err.getvalue()


def test_row_cache_refreshes_only_stale_rows_and_counts_per_row():
    """RowCache: the first refresh runs every row; then only the rows a step changed, as one sub-batch."""
    from diffkit.pipelines.discrete import RowCache

    seen = []

    def forward(ids):
        seen.append(ids[:, 0].tolist())
        return ids[..., None].double().expand(*ids.shape, 3) * 1.0

    x = torch.arange(4)[:, None].repeat(1, 5)
    cache = RowCache(4, "cpu")
    assert cache.refresh(x, forward).shape == (4, 5, 3) and seen == [[0, 1, 2, 3]]
    cache.record_step(torch.tensor([False, True, False, True]))
    x = x.clone()
    x[1], x[3] = 10, 30
    new = cache.refresh(x, forward)
    assert seen[-1] == [10, 30] and new.shape == (2, 5, 3)
    assert cache.outputs[:, 0, 0].tolist() == [0, 10, 2, 30]  # rows 0 and 2 reused, 1 and 3 replaced
    cache.record_step(torch.zeros(4, dtype=torch.bool))
    assert cache.refresh(x, forward) is None and len(seen) == 2  # nothing stale: no call
    assert cache.nfe_per_row.tolist() == [1, 2, 1, 2] and cache.changes_per_row.tolist() == [0, 1, 0, 1]
    assert cache.forward_calls == 2
    baseline = RowCache(4, "cpu", reuse=False)
    for _ in range(3):
        baseline.refresh(x, forward)
        baseline.record_step(torch.zeros(4, dtype=torch.bool))
    assert baseline.nfe_per_row.tolist() == [3] * 4 and seen[-1] == [0, 10, 2, 30] and baseline.forward_calls == 3


def test_transformer_config_old_total_noise_names_load(tmp_path):
    """RADDTransformer configs saved with sigma_min / sigma_max (the shipped asset's) still load."""
    m = tiny_radd_transformer(vocab_size=V, hidden_size=16, n_heads=2, n_blocks=1, length=8)
    m.save_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert "total_noise_min" in cfg and "sigma_min" not in cfg
    cfg["sigma_min"], cfg["sigma_max"] = cfg.pop("total_noise_min") * 4, cfg.pop("total_noise_max") / 2
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = type(m).from_pretrained(tmp_path / "t")
    assert (loaded.config.total_noise_min, loaded.config.total_noise_max) == (4e-4, 10.0)
    sched = DiscreteDiffusionPipeline.from_model(loaded).scheduler
    assert (sched.config.total_noise_min, sched.config.total_noise_max) == (4e-4, 10.0)
