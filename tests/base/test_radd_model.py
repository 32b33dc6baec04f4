"""The RADD transformer: output contract, an independent functional forward written from the
paper's description (arXiv:2406.03736 App. J.1), the official checkpoint format (written here by
hand, the official parameter names), strict loading errors, diffkit's own format, tokenizers and
the likelihood estimators."""

import itertools
import json
import math
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffkit.likelihood import ar_nll, blocked_nll, k_dce_nll, lambda_dce_nll, token_nll
from diffkit.models.radd import CheckpointError, RADDTransformer, load_official_checkpoint, tiny_radd_transformer
from diffkit.models.tokenizers import ByteTokenizer, CharTokenizer, gpt2_tokenizer, load_tokenizer, save_tokenizer

V, H, HEADS, BLOCKS, LEN = 40, 32, 2, 2, 64
CONFIG = {"tokens": V, "model": {"hidden_size": H, "n_heads": HEADS, "n_blocks": BLOCKS, "dropout": 0.0,
                                 "use_checkpoint": False, "dtype": "float32", "length": LEN, "name": "tiny",
                                 "type": "ddit_wot", "cond_dim": 128},
          "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
          "training": {"loss_type": "lambda_DCE", "ema": 0.9999}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def official_state(seed=0, vocab=V, with_inv_freq=True):
    """The official state_dict key table, random values (the zero-initialised output layer randomised)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"vocab_embed.embedding": (vocab + 1, H)}
    for k in range(BLOCKS):
        shapes.update({f"blocks.{k}.norm1.weight": (H,), f"blocks.{k}.norm1.bias": (H,),
                       f"blocks.{k}.attn_qkv.weight": (3 * H, H), f"blocks.{k}.attn_out.weight": (H, H),
                       f"blocks.{k}.norm2.weight": (H,), f"blocks.{k}.norm2.bias": (H,),
                       f"blocks.{k}.mlp.0.weight": (4 * H, H), f"blocks.{k}.mlp.0.bias": (4 * H,),
                       f"blocks.{k}.mlp.2.weight": (H, 4 * H), f"blocks.{k}.mlp.2.bias": (H,)})
    shapes.update({"output_layer.norm_final.weight": (H,), "output_layer.norm_final.bias": (H,),
                   "output_layer.linear.weight": (vocab + 1, H), "output_layer.linear.bias": (vocab + 1,)})
    state = {k: torch.randn(s, generator=g) * (0.3 if len(s) == 2 else 0.1) + (1.0 if "norm" in k else 0.0)
             for k, s in shapes.items()}
    if with_inv_freq:
        d = H // HEADS
        state["rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    return state


def write_official(folder, state, config=CONFIG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def reference_forward(state, ids):
    """Functional RADD forward from the architecture's description (not from diffkit's module)."""
    x = state["vocab_embed.embedding"][ids]
    B, L, _ = x.shape
    d = H // HEADS
    inv = state.get("rotary_emb.inv_freq", 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))  # the official buffer
    ang = torch.outer(torch.arange(L).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def ln(t, w, b):
        return F.layer_norm(t, [H], eps=1e-5) * w + b

    for k in range(BLOCKS):
        p = lambda n: state[f"blocks.{k}.{n}"]  # noqa: E731
        qkv = ln(x, p("norm1.weight"), p("norm1.bias")) @ p("attn_qkv.weight").T
        q, kk, v = qkv.view(B, L, 3, HEADS, d).unbind(2)
        q, kk, v = (t.transpose(1, 2) for t in (q, kk, v))
        att = torch.softmax(rope(q) @ rope(kk).transpose(-1, -2) / math.sqrt(d), -1) @ v
        x = x + att.transpose(1, 2).reshape(B, L, H) @ p("attn_out.weight").T
        h = ln(x, p("norm2.weight"), p("norm2.bias")) @ p("mlp.0.weight").T + p("mlp.0.bias")
        x = x + F.gelu(h, approximate="tanh") @ p("mlp.2.weight").T + p("mlp.2.bias")
    out = ln(x, state["output_layer.norm_final.weight"], state["output_layer.norm_final.bias"])
    logits = out @ state["output_layer.linear.weight"].T + state["output_layer.linear.bias"]
    return torch.log_softmax(logits[..., :V], -1)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("radd") / "official", official_state())


def test_output_contract():
    m = tiny_radd_transformer(vocab_size=V, length=16)
    ids = torch.randint(0, V + 1, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = m(ids)
        assert out.shape == (3, 16, V + 1) and out.dtype == torch.float32
        assert torch.allclose(out[..., :V].logsumexp(-1), torch.zeros(3, 16), atol=1e-5)  # log p over real tokens
        ids2 = ids.clone()
        ids2[:, -1] = (ids2[:, -1] + 1) % V
        assert not torch.allclose(m(ids2)[:, 0], out[:, 0])  # bidirectional: the last token informs the first
    assert m.time_conditioned is False and m.mask_token_id == V
    assert not any("inv_freq" in k for k in m.state_dict())


def test_official_checkpoint_loads_and_matches_spec_forward(official_dir):
    state = official_state()
    m = RADDTransformer.from_pretrained(official_dir)
    assert m.config.vocab_size == V and m.config.n_blocks == BLOCKS and m.config.noise_schedule == "loglinear"
    ids = torch.randint(0, V + 1, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(m(ids)[..., :V], reference_forward(state, ids), atol=1e-5)


def test_official_and_own_format_give_identical_log_probs(official_dir, tmp_path):
    a = load_official_checkpoint(official_dir)
    a.save_pretrained(tmp_path / "own")
    assert sorted(os.listdir(tmp_path)) == ["own"]  # atomic write: no temporary folder left
    assert json.loads((tmp_path / "own" / "config.json").read_text())["_class_name"] == "RADDTransformer"
    b = RADDTransformer.from_pretrained(tmp_path / "own")
    ids = torch.randint(0, V + 1, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


def test_inv_freq_is_the_only_tolerated_key(tmp_path):
    m = load_official_checkpoint(write_official(tmp_path / "no_inv", official_state(with_inv_freq=False)))
    assert m.config.hidden_size == H
    s = official_state()
    del s["blocks.1.mlp.0.bias"], s["output_layer.linear.bias"]
    s["blocks.0.adaLN_modulation.weight"] = torch.zeros(6 * H, 128)
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(write_official(tmp_path / "bad_keys", s))
    msg = str(e.value)
    assert "missing keys (2): blocks.1.mlp.0.bias, output_layer.linear.bias" in msg
    assert "unexpected keys (1): blocks.0.adaLN_modulation.weight" in msg and "SEDD/MDLM" in msg


def test_stored_inv_freq_is_used_and_a_nonstandard_one_warns(tmp_path):
    """The official module keeps rotary_emb.inv_freq as a state-dict buffer, so its output uses the
    stored value: so does diffkit's, warning with the largest difference when it is not base 10000."""
    state = official_state()
    d = H // HEADS
    state["rotary_emb.inv_freq"] = 1.0 / 5000 ** (torch.arange(0, d, 2).float() / d)  # another RoPE base
    with pytest.warns(UserWarning, match=r"model.safetensors: the stored rotary_emb.inv_freq is not the standard "
                                         r"RoPE frequencies \(base 10000\): largest difference 0.0\d+ at index"):
        m = load_official_checkpoint(write_official(tmp_path / "base5000", state))
    ids = torch.randint(0, V + 1, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(m(ids)[..., :V], reference_forward(state, ids), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the standard value: no warning
        load_official_checkpoint(write_official(tmp_path / "std", official_state()))
    state["rotary_emb.inv_freq"] = state["rotary_emb.inv_freq"][:-1]
    with pytest.raises(CheckpointError, match=r"rotary_emb.inv_freq has shape \(7,\), the architecture needs \(8,\)"):
        load_official_checkpoint(write_official(tmp_path / "short", state))


def test_damaged_weights_file_is_named(tmp_path):
    """A truncated or garbage model.safetensors: a CheckpointError naming the file, not a bare
    SafetensorError; in a shipped asset's folder (here a copy named text-radd, diffkit's format)
    the error also gives the rebuild command."""
    from diffkit.cli import main
    from diffkit.pipelines.discrete import DiscreteDiffusionPipeline, load_text_pipeline

    folder = write_official(tmp_path / "official", official_state())
    f = folder / "model.safetensors"
    data = f.read_bytes()
    for bad in (data[:len(data) // 2], b"version https://git-lfs.github.com/spec/v1\n"):
        f.write_bytes(bad)
        with pytest.raises(CheckpointError, match=f"{re.escape(str(f))} is damaged or not a safetensors file"):
            load_official_checkpoint(folder)
    asset = tmp_path / "text-radd"
    DiscreteDiffusionPipeline.from_model(tiny_radd_transformer(vocab_size=4, length=8),
                                         CharTokenizer("abcd")).save_pretrained(asset)
    w = asset / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    rebuild = ("rebuild the character-level RADD text model with "
               "`diffkit text train --output assets/text-radd --replace-asset`")
    with pytest.raises(CheckpointError, match=re.escape(rebuild)) as e:
        load_text_pipeline(asset)
    assert str(w) in str(e.value)
    assert main(["text", "nll", "--model", str(asset), "--text", "abc"]) == 1  # a clean CLI error


def test_wrong_vocabulary_size(tmp_path):
    folder = write_official(tmp_path / "v", official_state(vocab=V + 7))  # weights for 47 tokens, config says 40
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(folder)
    msg = str(e.value)
    assert "vocab_embed.embedding: checkpoint (48, 32) vs model (41, 32)" in msg
    assert "output_layer.linear.weight" in msg and "config tokens = 40" in msg
    with pytest.raises(CheckpointError, match="vocab_size 50257 does not match the checkpoint's tokens = 40"):
        load_official_checkpoint(write_official(tmp_path / "ok", official_state()), vocab_size=50257)


def test_config_errors(tmp_path):
    cfg = json.loads(json.dumps(CONFIG))
    del cfg["model"]["n_heads"]
    with pytest.raises(CheckpointError, match="lacks model.n_heads"):
        load_official_checkpoint(write_official(tmp_path / "c", official_state(), cfg))
    cfg = json.loads(json.dumps(CONFIG))
    cfg["model"]["dtype"] = "float8"
    with pytest.raises(ValueError, match=r"autocast_dtype \(config model.dtype\) must be one of"):
        load_official_checkpoint(write_official(tmp_path / "d", official_state(), cfg))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_official_checkpoint(tmp_path / "w")


def test_tokenizers(tmp_path):
    b = ByteTokenizer()
    assert b.decode(b.encode("héllo ✓")) == "héllo ✓" and b.vocab_size == 256 and b.mask_token_id == 256
    assert b.decode([104, 256, 105]) == "h\ufffdi"
    c = CharTokenizer("abc ", unk=" ")
    assert c.decode([2, 1, 0, 4]) == "cba\ufffd"
    with pytest.warns(UserWarning, match=r"3 of 6 character\(s\) are not in the tokenizer's alphabet and were "
                                         r"replaced by ' ' .*: '\?€'"):
        assert c.encode("ab?c€?") == [0, 1, 3, 2, 3, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.encode("ab c") == [0, 1, 3, 2]
    save_tokenizer(c, tmp_path)
    assert load_tokenizer(tmp_path).alphabet == "abc "
    with pytest.raises(ValueError, match="tokenizer has 4 tokens but the model has vocab_size 5"):
        load_tokenizer(tmp_path, vocab_size=5)
    with pytest.raises(ValueError, match="tokenizer must be 'byte', 'gpt2', 'char:<alphabet>' or a folder"):
        load_tokenizer(tmp_path / "nothing")
    try:
        tok = gpt2_tokenizer()
    except FileNotFoundError as e:
        assert "not available locally" in str(e)
    else:  # present in the local cache: GPT-2's 50,257 tokens
        assert tok.vocab_size == 50257 and tok.decode(tok.encode("Hello world")) == "Hello world"


# --------------------------------------------------------------------------- likelihood

@pytest.fixture(scope="module")
def small():
    return tiny_radd_transformer(vocab_size=6, hidden_size=16, n_heads=2, n_blocks=1, length=8, seed=5)


def test_lambda_dce_expectation_equals_any_order_ar_average(small):
    """App. C.3: E_λ[λ-DCE] = Σ_M B(|M|, L-|M|+1) Σ_{i∈M} CE_i(x with M masked) = the AR NLL averaged
    over all L! orders. Both sides computed exactly (L = 4)."""
    x = torch.tensor([3, 0, 5, 2])
    L, mask = len(x), small.mask_token_id
    exact = 0.0
    for m in range(1, L + 1):
        beta = math.factorial(m - 1) * math.factorial(L - m) / math.factorial(L)
        for M in itertools.combinations(range(L), m):
            noisy = x.clone()
            noisy[list(M)] = mask
            with torch.no_grad():
                ce = token_nll(small, noisy[None], x[None], mask)[0]
            exact += beta * float(ce[list(M)].sum())
    orders = [ar_nll(small, x, list(p)).nll for p in itertools.permutations(range(L))]
    assert sum(orders) / len(orders) == pytest.approx(exact, rel=1e-9)
    fwd = ar_nll(small, x, "forward")
    assert fwd.nll == pytest.approx(orders[0], rel=1e-12) and fwd.stderr == 0
    assert ar_nll(small, x, "backward").nll == pytest.approx(orders[-1], rel=1e-12)
    # the Monte Carlo bounds are unbiased estimates of the same number
    lam = lambda_dce_nll(small, x, 2000, seed=0, batch_size=500)
    kd = k_dce_nll(small, x, 2000, seed=1, batch_size=500)
    for r in (lam, kd):
        assert abs(r.nll - exact) < 4.5 * r.stderr and r.stderr < 0.1 * exact
    assert lam.num_tokens == 4 and lam.ppl == pytest.approx(math.exp(lam.nll / 4))


def test_likelihood_errors(small):
    with pytest.raises(ValueError, match="ids must be real tokens"):
        lambda_dce_nll(small, [1, small.mask_token_id])
    with pytest.raises(ValueError, match="estimator must be one of k-dce, lambda-dce, ar-forward"):
        blocked_nll(small, [[1, 2]], "t-dce")
    for fn in (lambda_dce_nll, k_dce_nll, ar_nll):  # ids >= V (here 6) used to raise a bare IndexError
        with pytest.raises(ValueError, match=r"ids must be real tokens \(0..5, not the mask id 6\); 2 position\(s\) "
                                             r"are not: \[7, 9\]"):
            fn(small, [1, 7, 2, 9])
    with pytest.raises(ValueError, match="order must be a permutation of 0..2"):
        ar_nll(small, [1, 2, 3], [0, 0, 1])
    with pytest.raises(ValueError, match="num_draws must be >= 1"):
        k_dce_nll(small, [1, 2], 0)
