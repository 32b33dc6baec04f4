"""FID/KID: each backend on its own image path, closed forms, sharding, caching, errors."""

import json
import math
import os
import re
import subprocess
import sys
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from diffkit.assets import AssetError
from diffkit.metrics import (FIDStats, InceptionWeightsError, ModelSamples, ProtocolWarning, compute_fid,
                             compute_kid, compute_stats, load_stats, save_stats)
from diffkit.metrics.folders import save_image_folder
from helpers import ROOT, small_cnn, tiny_class_pipeline

BACKENDS = ("diffkit", "clean-fid", "torchmetrics")


def images(n, seed, scale=1.0, channels=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g) * 2 - 1) * scale


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    save_image_folder(images(240, 0), root / "a")
    save_image_folder(images(200, 1, scale=0.7), root / "b")
    save_image_folder(images(120, 2, channels=3), root / "rgb_a")
    save_image_folder(images(120, 3, scale=0.6, channels=3), root / "rgb_b")
    return root


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("DIFFKIT_INCEPTION_WEIGHTS", raising=False)


# ------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("backend", BACKENDS)
def test_fid_of_a_set_with_itself_is_zero(backend):
    x = images(400, 5)
    r = compute_fid(x, x, backend=backend, features=small_cnn())
    assert r.feature_dim == 8 and r.n == r.n_ref == 400 and r.backend == backend
    assert abs(r.value) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_frechet_of_two_gaussians_matches_closed_form(backend):
    # non-commuting 2x2 covariances: tr (S1^½ S2 S1^½)^½ = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 1.5]])
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    r = compute_fid(FIDStats(mu1, s1, 1000), FIDStats(mu2, s2, 1000), backend=backend, features=small_cnn())
    assert r.value == pytest.approx(expected, rel=1e-9)
    # commuting (diagonal) 5-d covariances: |Δμ|² + Σ (√a - √b)²
    a, b = np.array([1.0, 2.0, 0.5, 3.0, 0.1]), np.array([0.2, 2.0, 1.5, 1.0, 0.1])
    r = compute_fid(FIDStats(np.zeros(5), np.diag(a), 1000), FIDStats(np.ones(5), np.diag(b), 1000),
                    backend=backend, features=small_cnn())
    assert r.value == pytest.approx(5 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)


# ------------------------------------------------------------------------ backends agree
@pytest.mark.parametrize("pair,channels", [(("a", "b"), 1), (("rgb_a", "rgb_b"), 3)])
def test_backends_agree_on_the_same_png_folders_each_on_its_own_path(folders, monkeypatch, pair, channels):
    import cleanfid.fid
    from torchmetrics.image.fid import FrechetInceptionDistance

    calls = {"cleanfid": 0, "tm_dtypes": set()}
    orig_files, orig_update = cleanfid.fid.get_files_features, FrechetInceptionDistance.update

    def spy_files(*a, **k):
        calls["cleanfid"] += 1
        assert k["num_workers"] == 0 and k["mode"] == "clean" and k["custom_fn_resize"] is not None
        return orig_files(*a, **k)

    def spy_update(self, imgs, real):
        calls["tm_dtypes"].add(imgs.dtype)
        return orig_update(self, imgs, real)

    monkeypatch.setattr(cleanfid.fid, "get_files_features", spy_files)
    monkeypatch.setattr(FrechetInceptionDistance, "update", spy_update)
    net = small_cnn(channels)
    gen, ref = folders / pair[1], folders / pair[0]
    vals = {be: compute_fid(gen, ref, backend=be, features=net) for be in BACKENDS}
    assert calls["cleanfid"] == 2 and calls["tm_dtypes"] == {torch.uint8}
    v = vals["diffkit"].value
    assert v > 0.01  # a real difference between the sets, so the relative check means something
    for be in ("clean-fid", "torchmetrics"):
        assert vals[be].value == pytest.approx(v, rel=1e-3)
    assert vals["clean-fid"].mode.startswith("clean")
    assert vals["torchmetrics"].mode == "custom module, update() on uint8"
    assert vals["diffkit"].protocol["channels"] == channels
    assert set(vals["diffkit"].versions) >= {"torch", "clean-fid", "torchmetrics", "scipy"}


def test_kid_from_backend_features(folders):
    net = small_cnn()
    k = {be: compute_kid(folders / "b", folders / "a", backend=be, features=net, subset_size=100, num_subsets=20)
         for be in ("diffkit", "torchmetrics", "clean-fid")}
    assert k["diffkit"].metric == "kid" and k["diffkit"].std > 0
    assert k["torchmetrics"].value == pytest.approx(k["diffkit"].value, rel=1e-6)
    assert k["clean-fid"].value == pytest.approx(k["diffkit"].value, rel=1e-3)
    same = compute_kid(folders / "a", folders / "a", features=net, subset_size=100, num_subsets=20)
    assert abs(same.value) < k["diffkit"].value


def test_tensor_iterable_and_folder_sources_agree(folders):
    x = images(240, 0)  # the tensor that was saved as folder "a"
    net = small_cnn()
    f_folder = compute_stats(folders / "a", features=net).features
    f_tensor = compute_stats(x, features=net).features
    f_iter = compute_stats((x[i:i + 50] for i in range(0, 240, 50)), features=net).features
    np.testing.assert_array_equal(f_folder, f_tensor)
    np.testing.assert_array_equal(f_folder, f_iter)


# ------------------------------------------------------------------------ caching
def test_cached_stats_reload_identically(folders, tmp_path):
    net = small_cnn()
    st = compute_stats(folders / "a", features=net, batch_size=64)
    path = save_stats(st, tmp_path / "ref.npz", include_features=True)
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    np.testing.assert_array_equal(back.features, st.features)
    assert back.n == st.n == 240 and back.protocol == json.loads(json.dumps(st.protocol))
    for be in BACKENDS:  # stats cached by each backend's own path reproduce its live FID exactly
        cached = save_stats(compute_stats(folders / "a", backend=be, features=net), tmp_path / f"{be}.npz")
        live = compute_fid(folders / "b", folders / "a", backend=be, features=net)
        again = compute_fid(folders / "b", cached, backend=be, features=net)
        assert again.value == live.value and again.n_ref == 240
    assert compute_kid(folders / "b", path, features=net, subset_size=100).value == \
        compute_kid(folders / "b", folders / "a", features=net, subset_size=100).value
    save_stats(st, tmp_path / "nofeat.npz")
    with pytest.raises(ValueError, match="KID needs features"):
        compute_kid(folders / "b", tmp_path / "nofeat.npz", features=net)


def test_protocol_mismatch_and_small_n_warn(folders, tmp_path):
    path = save_stats(compute_stats(folders / "a", features=small_cnn(seed=1)), tmp_path / "s.npz")
    with pytest.warns(ProtocolWarning, match="weights_sha256"):
        compute_fid(folders / "b", path, features=small_cnn(seed=2))
    with pytest.warns(ProtocolWarning, match="below the feature dimension"):
        compute_fid(images(20, 1), images(20, 2), features=small_cnn(dim=32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtocolWarning)
        compute_fid(folders / "b", path, features=small_cnn(seed=1))


# ------------------------------------------------------------------------ models, sharding
def test_model_samples_are_keyed_to_the_global_index(tiny_class_unet):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_ddim_scheduler

    pipe = ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler())
    for sampler in ("ddim", "edm-euler"):
        m = ModelSamples(pipe, sampler, steps=3).build("cpu")
        whole = m.images(list(range(12)), seed=0)
        split = torch.cat([m.images(list(range(i, min(i + 5, 12))), seed=0) for i in range(0, 12, 5)])
        # same noise per index; batched BLAS moves outputs by ~1e-6 at most
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
        assert not torch.allclose(m.images([0, 1], seed=1), whole[:2], atol=1e-2)
    st = compute_stats(ModelSamples(pipe, "ddim", steps=3), features=small_cnn(), n=12, batch_size=5)
    assert st.n == 12 and st.protocol["sampler"] == "ddim" and st.protocol["seed"] == 0
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the pipeline passed in keeps its scheduler
    with pytest.raises(ValueError, match="not an image sampler"):
        compute_stats(ModelSamples(pipe, "radd", steps=3), features=small_cnn(), n=12)
    with pytest.raises(ValueError, match="n .* is required"):
        compute_stats(ModelSamples(pipe, "ddim", steps=3), features=small_cnn())


def _record_model_images(monkeypatch):
    seen, images = [], ModelSamples.images

    def record(self, indices, seed):
        seen.append(images(self, indices, seed))
        return seen[-1]

    monkeypatch.setattr(ModelSamples, "images", record)
    return seen


@pytest.mark.parametrize("name, extra", [("digits-unet", []), ("digits-unet", ["--sampler", "ddim", "--steps", "50"]),
                                         ("digits-onestep", [])])
def test_fid_model_images_are_the_benchmark_samples(name, extra, monkeypatch, capsys, one_thread):
    """The images behind the acceptance commands `diffkit fid --model digits-onestep` and `diffkit fid
    --model digits-unet --sampler ddim --steps 50` are bitwise those of the benchmarks whose results
    JSON hold the published figures (benchmarks/digits_onestep_card.py, benchmarks/digits_quality.py:
    sample_digits on balanced labels at the same seed), here at small n."""
    from diffkit.cli import main
    from diffkit.metrics.digits import balanced_labels, sample_digits
    from diffkit.pipelines import load_pipeline

    seen = _record_model_images(monkeypatch)
    argv = ["fid", "--model", name, *extra, "--n", "50", "--ref", "digits-train", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    assert "FID = " in capsys.readouterr().out
    pipe = load_pipeline(name)
    steps = 1 if getattr(pipe, "one_step", False) else 50  # the benchmarks' settings
    ref = sample_digits(pipe, balanced_labels(50), seed=1, steps=steps, batch_size=500)
    assert torch.equal(torch.cat(seen), ref)
    if getattr(pipe, "one_step", False):  # and the pipeline's documented call
        assert torch.equal(ref, pipe(class_labels=balanced_labels(50), seed=1, output_type="pt").images)


def test_fid_and_sample_pass_sampler_options(monkeypatch, capsys, tmp_path, one_thread):
    """`diffkit fid --sampler bdia-euler --option gamma=0.25 --option gamma_mode=constant` and `diffkit sample
    --sampler bdia-ddim --gamma 0.9` run with those settings (not the default γ = 0.5); an undeclared
    option is refused with the accepted names."""
    from diffkit.cli import main
    from diffkit.pipelines import load_pipeline
    from diffkit.sampling import generate

    seen = _record_model_images(monkeypatch)
    assert main(["fid", "--model", "digits-unet", "--sampler", "bdia-euler", "--option", "gamma=0.25", "--option",
                 "gamma_mode=constant", "--steps", "4", "--n", "20", "--ref", "digits-train", "--no-progress"]) == 0
    assert "FID = " in capsys.readouterr().out
    pipe = load_pipeline("digits-unet")
    want = generate(pipe, "bdia-euler", steps=4, n=20, options={"gamma": 0.25, "gamma_mode": "constant"}).images
    default = generate(pipe, "bdia-euler", steps=4, n=20).images
    assert torch.equal(torch.cat(seen), want) and not torch.equal(want, default)

    out = tmp_path / "s.png"
    saved = []
    import diffkit.images

    real = diffkit.images.save_grid
    monkeypatch.setattr(diffkit.images, "save_grid", lambda x, p, **k: saved.append(x) or real(x, p, **k))
    assert main(["sample", "--model", "digits-unet", "--sampler", "bdia-ddim", "--gamma", "0.9", "--steps", "4",
                 "--n", "10", "--output", str(out)]) == 0
    assert "gamma=0.9" in capsys.readouterr().out and out.exists()
    want = generate(pipe, "bdia-ddim", steps=4, n=10, options={"gamma": 0.9}).images
    assert torch.equal(saved[0], want) and not torch.equal(want, generate(pipe, "bdia-ddim", steps=4, n=10).images)

    for argv in (["fid", "--model", "digits-unet", "--sampler", "bdia-euler", "--option", "eta=0.1", "--n", "10",
                  "--ref", "digits-train"],
                 ["sample", "--model", "digits-unet", "--sampler", "ddim", "--gamma", "0.5", "--output", str(out)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "has no option" in err and "it accepts" in err, err


def test_model_samples_drive_a_one_step_generator_with_its_own_sampler_and_config(tiny_class_unet, one_thread):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.pipelines.one_step import OneStepPipeline
    from diffkit.testing import tiny_ddim_scheduler

    one = OneStepPipeline(tiny_class_unet, tiny_ddim_scheduler(), generator_timestep=200)
    idx = list(range(3, 10))
    m = ModelSamples(one).build("cpu")
    ref = one(class_labels=[k % 10 for k in idx], seed=2, sample_indices=idx, output_type="pt").images
    assert torch.equal(m.images(idx, seed=2), ref)
    assert m.describe()["steps"] == 1 and m.describe()["scheduler"] == "DDIMScheduler"
    for sampler in ("ddim", "edm-heun"):
        with pytest.raises(ValueError, match=r"one-step generator \(OneStepPipeline\).*needs a diffusion model"):
            ModelSamples(one, sampler).build("cpu")
    # a diffusion pipeline: no sampler named = its own scheduler, as the pipeline call
    cc = ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler())
    own = ModelSamples(cc, steps=3).build("cpu").images(idx, seed=2)
    assert torch.equal(own, cc(class_labels=[k % 10 for k in idx], num_inference_steps=3, seed=2, sample_indices=idx,
                               output_type="pt", progress=False).images)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=rf"steps must be an integer >= 1, got {bad!r}"):
            ModelSamples(cc, "ddim", steps=bad)
    for n in (0, -1):
        with pytest.raises(ValueError, match=rf"source: n must be an integer >= 1 \(the number of images\), got {n}"):
            compute_stats(ModelSamples(cc, steps=2), features=small_cnn(), n=n)


def test_one_and_two_process_runs_give_the_same_features(folders, tmp_path):
    from _dist_worker import launch

    m = ModelSamples(tiny_class_pipeline(), "ddim", steps=3).build("cpu")
    one = {"images": m.images(list(range(13)), seed=0).flatten(1).numpy(),
           "model": compute_stats(ModelSamples(tiny_class_pipeline(), "ddim", steps=3), features=small_cnn(), n=13,
                                  batch_size=13).features}
    for be in ("clean-fid", "torchmetrics"):
        one[be] = compute_stats(folders / "a", backend=be, features=small_cnn(), n=101, batch_size=101)
    r = launch("fid", tmp_path, folders / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):  # every process holds all gathered results, in global index order
        two = np.load(tmp_path / f"rank{rank}.npz")
        assert int(two["world"]) == 2
        # stated tolerances: samples 1e-5 (batched BLAS differs by ~1e-6); features of identical
        # images 1e-5; stats 1e-6. Model features may differ more where a sample sits on a
        # uint8 rounding boundary (one grey level moves a feature by ~1e-3), hence 1e-2 there.
        np.testing.assert_allclose(two["images"], one["images"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(two["model"], one["model"], rtol=0, atol=1e-2)
        for be in ("clean-fid", "torchmetrics"):
            np.testing.assert_allclose(two[f"{be}_f"], one[be].features, rtol=0, atol=1e-5)
            np.testing.assert_allclose(two[f"{be}_mu"], one[be].mu, rtol=0, atol=1e-6)
            np.testing.assert_allclose(two[f"{be}_sigma"], one[be].sigma, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ Inception routes
def test_missing_inception_weights_raise_the_documented_error(folders, tmp_path):
    for backend, fname in (("clean-fid", "inception-2015-12-05.pt"),
                           ("torchmetrics", "weights-inception-2015-12-05-6726825d.pth")):
        with pytest.raises(InceptionWeightsError, match=fname) as e:
            compute_fid(folders / "b", folders / "a", backend=backend, features="inception")
        assert "--inception-weights" in str(e.value) and "never downloads" in str(e.value)
        with pytest.raises(InceptionWeightsError, match=str(tmp_path / fname)):
            compute_fid(folders / "b", folders / "a", backend=backend, features="inception",
                        inception_weights=tmp_path)
    with pytest.raises(ValueError, match="backend='clean-fid' or 'torchmetrics'"):
        compute_fid(folders / "b", folders / "a", backend="diffkit", features="inception")


class _StubLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 2048)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, (8, 8)).flatten(1))


class _StubInception(nn.Module):
    """Same TorchScript interface as the StyleGAN2-ADA file clean-fid loads (``layers``, ``return_features``)."""

    def __init__(self):
        super().__init__()
        self.layers = _StubLayers()

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


def test_clean_fid_inception_route_loads_the_users_file(folders, tmp_path, monkeypatch):
    import hashlib

    torch.manual_seed(0)
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_StubInception()).save(str(path))
    seen = []
    import cleanfid.inception_torchscript as its

    orig = its.InceptionV3W.forward

    def spy(self, x):
        seen.append(tuple(x.shape[1:]))
        return orig(self, x)

    monkeypatch.setattr(its.InceptionV3W, "forward", spy)
    monkeypatch.setenv("DIFFKIT_INCEPTION_WEIGHTS", str(tmp_path))
    # statistics only: a 2048-d scipy sqrtm would dominate the test's time
    st = compute_stats(folders / "rgb_a", backend="clean-fid", features="inception", n=6)
    assert seen and set(seen) == {(3, 299, 299)}  # clean-fid's clean resize ran before the network
    assert st.features.shape == (6, 2048) and st.protocol["mode"] == "clean"
    assert st.protocol["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "PIL bicubic" in st.protocol["resize"]
    with pytest.raises(InceptionWeightsError, match="named exactly"):
        other = tmp_path / "copy.pt"
        other.write_bytes(path.read_bytes())
        compute_fid(folders / "rgb_b", folders / "rgb_a", backend="clean-fid", features="inception",
                    inception_weights=other)


# ------------------------------------------------------------------------ digits protocol
def test_digits_protocol_tensor_and_png_paths_agree(tmp_path):
    from diffkit.metrics.features import DigitsFeatures
    from diffkit.models.digits_features import DigitsFeatureNet

    torch.manual_seed(0)
    fx = DigitsFeatures(DigitsFeatureNet())  # random weights: the protocol, not the shipped network
    x = images(100, 7)
    save_image_folder(x, tmp_path / "q", levels=fx.levels)
    st_t = compute_stats(x, features=fx)
    st_f = compute_stats(tmp_path / "q", features=fx)
    for be in ("clean-fid", "torchmetrics"):
        np.testing.assert_allclose(compute_stats(tmp_path / "q", backend=be, features=fx).features, st_f.features,
                                   rtol=0, atol=1e-9)
    np.testing.assert_array_equal(st_t.features, st_f.features)
    assert st_t.protocol["protocol"].startswith("fid-digits") and st_t.protocol["grey_levels"] == 17


def test_digits_train_reference(folders):
    from diffkit.metrics.fid import resolve_reference

    try:
        resolve_reference("digits-train")
    except AssetError as e:
        assert "diffkit train-features" in str(e)
        with pytest.raises(AssetError, match="rebuild it with"):
            compute_fid(images(20, 1), "digits-train")
        return
    from diffkit.data import digits_tensors
    from diffkit.metrics import fid_digits

    x = digits_tensors("test")[0][:200]
    r = compute_fid(x, "digits-train")  # features inferred from the stats' protocol
    assert r.feature_extractor == "digits"
    assert r.value == pytest.approx(fid_digits(x, kid_subsets=2).fid, rel=1e-6)
    k = compute_kid(x, "digits-train", subset_size=100, num_subsets=5)  # train images re-extracted for KID
    assert k.n_ref == 1442 and math.isfinite(k.value)


# ------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(folders, tmp_path):
    from PIL import Image

    net = small_cnn()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        compute_fid(tmp_path / "empty", folders / "a", features=net)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_fid(tmp_path / "nope", folders / "a", features=net)
    mixed = tmp_path / "mixed"
    save_image_folder(images(3, 0), mixed)
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "zz.png")
    with pytest.raises(ValueError, match="mismatched image sizes"):
        compute_fid(mixed, folders / "a", features=net)
    chans = tmp_path / "chans"
    save_image_folder(images(3, 0), chans)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(chans / "zz.png")
    with pytest.raises(ValueError, match="mismatched channels"):
        compute_fid(chans, folders / "a", features=net)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(rgba / "x.png")
    with pytest.raises(ValueError, match="accepted modes"):
        compute_fid(rgba, folders / "a", features=net)
    bad = images(10, 0)
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_fid(bad, folders / "a", features=net)
    with pytest.raises(ValueError, match="must be in \\[-1, 1\\]"):
        compute_fid(images(10, 0) * 255, folders / "a", features=net)
    with pytest.raises(ValueError, match="n=500 but folder .* holds only 240"):
        compute_fid(folders / "b", folders / "a", features=net, n_ref=500)
    with pytest.raises(ValueError, match="n=50 but only 10 images"):
        compute_fid(images(10, 0), folders / "a", features=net, n=50)
    with pytest.raises(ValueError, match="yielded only 20"):
        compute_fid(iter([images(10, 0), images(10, 1)]), folders / "a", features=net, n=30)
    with pytest.raises(ValueError, match="mismatched image shapes"):
        compute_fid([images(10, 0), images(10, 1, size=12)], folders / "a", features=net)
    with pytest.raises(ValueError, match="bring both sets to one size"):
        compute_fid(images(30, 0, size=12), folders / "a", features=net)
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        compute_fid(torch.zeros(4, 2, 8, 8), folders / "a", features=net)
    with pytest.raises(ValueError, match="cannot be resampled"):
        compute_fid(folders / "b", FIDStats(np.zeros(8), np.eye(8), 240), features=net, n_ref=100)
    with pytest.raises(ValueError, match="backend must be one of"):
        compute_fid(folders / "b", folders / "a", backend="pytorch-fid", features=net)
    with pytest.raises(ValueError, match="differ in dimension"):
        compute_fid(folders / "b", FIDStats(np.zeros(4), np.eye(4), 100), features=net)


# ------------------------------------------------------------------------ CLI, example, benchmark
def test_cli_fid_folders_stats_and_json(folders, tmp_path, monkeypatch, capsys):
    from diffkit.cli import main

    (tmp_path / "fid_feats.py").write_text(
        "import torch\nfrom torch import nn\n\ndef make():\n    torch.manual_seed(1)\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),"
        " nn.Linear(8 * 16, 8)).eval()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    feats = ["--features", "fid_feats:make", "--no-progress"]
    out_json = tmp_path / "r.json"
    assert main(["fid", str(folders / "b"), "--ref", str(folders / "a"), "--kid", "--kid-subset-size", "100",
                 "--json", str(out_json), *feats]) == 0
    printed = capsys.readouterr().out
    rec = json.loads(out_json.read_text())
    api = compute_fid(folders / "b", folders / "a", features=small_cnn())
    assert [r["metric"] for r in rec] == ["fid", "kid"] and rec[0]["value"] == api.value
    assert f"FID = {api.value:.6g}" in printed and "KID" in printed
    stats = tmp_path / "ref.npz"
    assert main(["fid", str(folders / "a"), "--save-stats", str(stats), *feats]) == 0
    assert main(["fid", str(folders / "b"), "--ref", str(stats), "--backend", "torchmetrics", *feats]) == 0
    assert "backend torchmetrics" in capsys.readouterr().out
    assert main(["fid", "--ref", str(folders / "a"), *feats]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["fid", "--model", "digits-unet", "--ref", str(folders / "a"), *feats]) == 1
    assert "--n" in capsys.readouterr().err


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


FID_ROW = re.compile(r"^\| (train subset|test split|teacher [^|]+) \| (\d+) \| ([0-9.]+) ± ([0-9.]+) \|$", re.M)


def _fid_small_n_quick(assets):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fid_small_n.py"), "--quick"],
                          capture_output=True, text=True, timeout=180, env={**SUBPROCESS_ENV, "DIFFKIT_ASSETS": assets})


def test_benchmark_quick_runs_the_fid_table_on_the_shipped_assets():
    from diffkit.metrics.fid import resolve_reference

    assets = ROOT / "assets"
    resolve_reference("digits-train")  # shipped: an AssetError here is a failure, not a reason to skip
    out = _fid_small_n_quick(str(assets))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped" not in out.stdout, out.stdout
    rows = {(name, int(n)): float(mean) for name, n, mean, _ in FID_ROW.findall(out.stdout)}
    assert set(rows) == {("train subset", 50), ("train subset", 200), ("test split", 50), ("test split", 200)}, \
        out.stdout
    # subsets of the reference set itself: FID > 0 is pure small-n bias, and it shrinks as n grows
    assert rows["train subset", 50] > rows["train subset", 200] > 0
    assert rows["test split", 50] > rows["test split", 200] > 0

