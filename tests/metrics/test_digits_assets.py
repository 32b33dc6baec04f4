"""Shipped digits assets (teacher, feature network, reference statistics) and the FID-digits protocol."""

import json
import shutil

import numpy as np
import pytest
import torch

from diffkit.assets import AssetError, asset_path
from diffkit.data import digits_tensors
from diffkit.metrics.digits import (PROTOCOL, balanced_labels, classify, compute_reference_stats, digits_features,
                                    fid_digits, load_reference_stats, memorisation_ratio, sample_digits)
from diffkit.metrics.frechet import feature_stats, frechet_distance
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines import load_pipeline
from helpers import ASSETS

TEACHER_CMD = "diffkit train-teacher"
FEATURES_CMD = "diffkit train-features"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def teacher():
    pipe = load_pipeline("digits-unet")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def net():
    return load_feature_net("digits-features")


# ---------------------------------------------------------------------------- teacher
def test_teacher_loads_with_diffkit_and_plain_diffusers(teacher):
    from diffusers import DDIMScheduler, UNet2DModel

    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    d = asset_path("digits-unet")
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == "ClassConditionalPipeline"
    assert isinstance(teacher, ClassConditionalPipeline) and teacher.num_classes == 10
    assert isinstance(teacher.scheduler, DDIMScheduler) and teacher.scheduler.config.num_train_timesteps == 1000
    unet = UNet2DModel.from_pretrained(str(d), subfolder="unet")
    assert unet.config.num_class_embeds == 11 and unet.config.sample_size == 8 and unet.dtype == torch.float32
    sd, ref = unet.state_dict(), teacher.unet.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    again = ClassConditionalPipeline.from_pretrained(str(d))
    assert torch.equal(again.unet.conv_in.weight, teacher.unet.conv_in.weight)
    with torch.no_grad():
        out = unet(torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 500,
                   class_labels=torch.tensor([0, 5, 10])).sample
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_teacher_samples_are_finite_and_recognisable(teacher, net):
    labels = balanced_labels(20)
    x = sample_digits(teacher, labels, seed=0, steps=20)
    assert x.shape == (20, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    # Generous floor (the model card reports >= 95% at DDIM-50, n = 3000): catches a broken asset.
    assert (classify(x, net) == labels.numpy()).mean() >= 0.8


def test_assets_share_fits_the_budget():
    total = sum(f.stat().st_size for name in ("digits-unet", "digits-features")
                for f in asset_path(name).rglob("*") if f.is_file())
    assert total <= 20 * 2**20, total


# ---------------------------------------------------------------------------- feature network
def test_feature_net_reproduces_its_recorded_accuracy(net):
    cfg = net.stored_config
    x, y = digits_tensors("test")
    correct = int((classify(x, net) == y.numpy()).sum())
    assert (correct, len(y)) == (cfg["test_correct"], cfg["test_n"])
    assert correct / len(y) >= 0.97
    f = digits_features(x[:5], net)
    assert f.shape == (5, net.feature_dim) and net.feature_dim <= 64


def test_reference_stats_belong_to_the_shipped_net(net):
    ref = load_reference_stats()
    assert ref.fields["protocol"] == PROTOCOL and ref.fields["grey_levels"] == 17 and ref.fields["split"] == "train"
    assert ref.n == len(digits_tensors("train")[1])
    again = compute_reference_stats(net)
    np.testing.assert_allclose(again.mu, ref.mu, rtol=0, atol=1e-5)
    np.testing.assert_allclose(again.sigma, ref.sigma, rtol=0, atol=1e-5)
    # The train split against its own statistics: FID 0 (up to the float64 eigen-solver).
    assert frechet_distance(again.mu, again.sigma, ref.mu, ref.sigma) < 1e-6


def test_fid_digits_separates_data_from_noise(net):
    x_test, _ = digits_tensors("test")
    ref = load_reference_stats()
    data = fid_digits(x_test, net, ref, kid_subsets=10)
    noise = fid_digits(torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, net, ref,
                       kid_subsets=10)
    assert data.n == len(x_test) and data.n_ref == ref.n
    assert 0 <= data.fid < noise.fid / 10 and data.kid < noise.kid


# ---------------------------------------------------------------------------- protocol pieces
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expect, rel=1e-10)
    # Full covariance S and c^2 S: (1 - c)^2 tr(S).
    a = rng.normal(size=(d, d))
    S = a @ a.T
    assert frechet_distance(mu1, S, mu1, 9 * S) == pytest.approx(4 * np.trace(S), rel=1e-9)
    assert frechet_distance(mu1, S, mu1, S) == pytest.approx(0, abs=1e-9)
    # Near-singular (rank 2 in 64-d, as from few samples): finite, >= 0, 0 against itself.
    f = rng.normal(size=(3, 64))
    mu, sig = feature_stats(f)
    assert frechet_distance(mu, sig, mu, sig) == pytest.approx(0, abs=1e-8)
    assert np.isfinite(frechet_distance(mu, sig, mu + 1, sig * 2))


def _lower_median_nn_distance(x, ref):
    """Independent of diffkit: grey levels v = 8(x + 1) in 0..16, brute-force nearest neighbour in numpy,
    distance back in [-1, 1] units; torch's median (the lower middle value for even counts)."""
    va = np.rint((x.double().numpy().reshape(len(x), -1) + 1) * 8)
    vb = np.rint((ref.double().numpy().reshape(len(ref), -1) + 1) * 8)
    d = np.sqrt(((va[:, None, :] - vb[None, :, :]) ** 2).sum(-1)).min(1) / 8
    return np.sort(d)[(len(d) - 1) // 2]


def test_memorisation_ratio():
    x_train, _ = digits_tensors("train")
    x_test, _ = digits_tensors("test")
    noise = torch.rand(201, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = memorisation_ratio(noise)
    assert r.median_test == pytest.approx(_lower_median_nn_distance(x_test, x_train), rel=1e-12)
    assert r.median_generated == pytest.approx(_lower_median_nn_distance(noise, x_train), rel=1e-12)
    assert r.ratio == pytest.approx(r.median_generated / r.median_test, rel=1e-12) and r.ratio > 2  # far from data
    # held-out real digits are as far from the training set as other held-out digits: one random half
    # of the test split, measured against the other half as the reference "test" set (0.97-1.06 over 5 splits)
    perm = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(0))
    half = memorisation_ratio(x_test[perm[:177]], test=x_test[perm[177:]])
    assert 0.85 < half.ratio < 1.15, half
    copies = memorisation_ratio(x_train[:200] + 0.01)  # quantisation snaps these back onto training images
    assert copies.ratio == 0 and copies.median_test > 0


def test_balanced_labels():
    assert balanced_labels(20).bincount().tolist() == [2] * 10
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_labels(15)


# ---------------------------------------------------------------------------- bad assets
def test_missing_or_corrupted_teacher_names_path_and_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFKIT_ASSETS", str(tmp_path / "nowhere"))
    with pytest.raises(AssetError, match=f"nowhere/digits-unet.*{TEACHER_CMD}"):
        load_pipeline("digits-unet")
    bad = tmp_path / "digits-unet"
    shutil.copytree(asset_path(ASSETS / "digits-unet"), bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(AssetError, match=f"{bad}.*corrupted.*{TEACHER_CMD}"):
        load_pipeline(bad)
    shutil.rmtree(bad / "unet")
    with pytest.raises(AssetError, match=f"{bad}.*{TEACHER_CMD}"):
        load_pipeline(bad)


def test_missing_or_corrupted_feature_net_names_path_and_rebuild_command(tmp_path):
    src = asset_path("digits-features")
    bad = tmp_path / "digits-features"
    shutil.copytree(src, bad)
    (bad / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(AssetError, match=f"{bad}.*corrupted.*{FEATURES_CMD}"):
        load_feature_net(bad)
    shutil.copy(src / "model.safetensors", bad / "model.safetensors")
    (bad / "train_stats.npz").write_bytes(b"not an npz")
    with pytest.raises(AssetError, match=f"{FEATURES_CMD}"):
        load_reference_stats(bad)
    (bad / "train_stats.npz").unlink()
    with pytest.raises(AssetError, match=f"{bad}.*missing train_stats.npz.*{FEATURES_CMD}"):
        load_reference_stats(bad)
    (bad / "config.json").unlink()
    with pytest.raises(AssetError, match=f"{bad}.*missing config.json.*{FEATURES_CMD}"):
        load_feature_net(bad)


def test_stats_from_another_net_are_refused(tmp_path):
    bad = tmp_path / "digits-features"
    shutil.copytree(asset_path("digits-features"), bad)
    (bad / "SHA256SUMS").unlink()  # the manifest would refuse the changed net first; this tests the stats' own tie
    from safetensors.torch import load_file, save_file

    sd = load_file(str(bad / "model.safetensors"))
    sd["head.bias"] = sd["head.bias"] + 1
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(AssetError, match="does not belong to the feature network"):
        load_reference_stats(bad)


# ---------------------------------------------------------------------------- demo
def test_demo_step_writes_the_per_class_grid(tmp_path):
    from diffkit.commands import train_teacher
    from diffkit.commands._demo import DemoContext

    ctx = DemoContext(str(tmp_path), quick=True)
    train_teacher.demo_step(ctx)
    assert (tmp_path / "digits_per_class.png").exists()
    assert "feature-net top-1" in ctx.report[-1]
