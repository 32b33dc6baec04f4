"""Damaged weights never load silently: strict key/shape checks for diffkit's own models and
assets, the sha256 manifest of the shipped assets, and the one sha256 helper
(non-finite outputs of NaN weights: test_nonfinite_outputs.py)."""

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

import diffkit.weights as weights
from diffkit.assets import REBUILD, AssetError, asset_path
from diffkit.commands.train_teacher import export_pipeline
from diffkit.distill import path as disback_path
from diffkit.pipelines.one_step import export_generator
from diffkit.metrics import digits
from diffkit.metrics.features import DigitsFeatures
from diffkit.models.digits_features import load_feature_net
from diffkit.models.radd import RADDTransformer, tiny_radd_transformer
from diffkit.models.tokenizers import CharTokenizer
from diffkit.pipelines import load_pipeline
from diffkit.pipelines.discrete import load_text_pipeline
from diffkit.testing import tiny_unet2d
from diffkit.text_train import export_text_model
from helpers import ASSETS

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

SHIPPED = ASSETS
# asset -> its main weights file (relative) and how diffkit loads it
ASSETS = {
    "digits-unet": ("unet/diffusion_pytorch_model.safetensors", load_pipeline),
    "digits-onestep": ("unet/diffusion_pytorch_model.safetensors", load_pipeline),
    "digits-onestep-warm-critic": ("unet/diffusion_pytorch_model.safetensors", load_pipeline),
    "text-radd": ("transformer/diffusion_pytorch_model.safetensors", load_pipeline),
    "digits-features": ("model.safetensors", load_feature_net),
}


def _copy(name, root: Path, manifest: bool = True) -> Path:
    d = root / name
    shutil.copytree(SHIPPED / name, d)
    if not manifest:
        (d / weights.MANIFEST).unlink(missing_ok=True)
    return d


def _load_error(name, folder) -> str:
    with pytest.raises(AssetError) as e:
        ASSETS[name][1](folder)
    return str(e.value)


def _middle_key(sd: dict) -> str:
    return sorted(sd)[len(sd) // 2]


# ---------------------------------------------------------------------------- strict keys and shapes
@pytest.mark.parametrize("name", sorted(ASSETS))
def test_asset_with_a_tensor_removed_names_the_file_the_key_and_the_rebuild_command(tmp_path, name):
    # no manifest in the copy: the strict key check itself must catch it (as for a user's own export)
    d = _copy(name, tmp_path, manifest=False)
    f = d / ASSETS[name][0]
    sd = load_file(str(f))
    key = _middle_key(sd)
    del sd[key]
    save_file(sd, str(f))
    msg = _load_error(name, d)
    assert str(f) in msg and f"missing keys (1): {key}" in msg and REBUILD[name][1] in msg, msg
    if name == "text-radd":  # diffkit's own model class is strict on its own, not only through load_pipeline
        with pytest.raises(weights.WeightsError, match=f"missing keys \\(1\\): {key}"):
            RADDTransformer.from_pretrained(str(d / "transformer"))


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_asset_with_a_tensor_of_the_wrong_shape_or_an_extra_tensor_is_refused(tmp_path, name):
    d = _copy(name, tmp_path, manifest=False)
    f = d / ASSETS[name][0]
    sd = load_file(str(f))
    key = _middle_key(sd)
    shape = tuple(sd[key].shape)
    sd[key] = torch.zeros(*shape[:-1], shape[-1] + 1)
    save_file(sd, str(f))
    msg = _load_error(name, d)
    assert str(f) in msg and f"{key}: file {(*shape[:-1], shape[-1] + 1)} vs model {shape}" in msg, msg
    sd[key] = torch.zeros(shape)
    sd["stray.weight"] = torch.zeros(3)
    save_file(sd, str(f))
    msg = _load_error(name, d)
    assert str(f) in msg and "unexpected keys (1): stray.weight" in msg, msg


def test_bare_unet_folder_is_loaded_strictly(tmp_path, tiny_class_unet):
    tiny_class_unet.save_pretrained(tmp_path / "u")
    f = tmp_path / "u" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    del sd["conv_out.bias"]
    save_file(sd, str(f))
    with pytest.raises(AssetError, match="missing keys \\(1\\): conv_out.bias"):
        load_pipeline(tmp_path / "u")


# ---------------------------------------------------------------------------- the sha256 manifest
@pytest.mark.parametrize("name", sorted(ASSETS))
def test_a_flipped_byte_in_a_shipped_asset_is_a_sha256_mismatch(tmp_path, monkeypatch, name):
    d = _copy(name, tmp_path)
    f = d / ASSETS[name][0]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: the file still parses and loads
    f.write_bytes(bytes(data))
    monkeypatch.setenv("DIFFKIT_ASSETS", str(tmp_path))  # the shipped asset, found by name
    msg = _load_error(name, name)
    assert "sha256" in msg and str(f) in msg and REBUILD[name][1] in msg, msg
    if name == "text-radd":  # the text loader's own entry point checks it too
        with pytest.raises(AssetError, match=f"sha256 mismatch: {f}"):
            load_text_pipeline(d)


@pytest.mark.parametrize("name", sorted(REBUILD))
def test_the_manifest_of_every_shipped_asset_is_current(name):
    d = asset_path(SHIPPED / name)
    listed = {}
    for line in (d / weights.MANIFEST).read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    assert listed, f"{d / weights.MANIFEST} lists no file"
    # every weights/config file that a loader reads is listed, and nothing else
    assert sorted(listed) == weights.manifest_files(d)
    for rel, digest in listed.items():
        assert hashlib.sha256((d / rel).read_bytes()).hexdigest() == digest, \
            f"{d / rel} changed: {weights.MANIFEST} is stale"


def test_exporters_write_a_manifest_that_loads(tmp_path):
    unet = tiny_unet2d(num_classes=10)
    export_pipeline(unet, DDIMScheduler(), tmp_path / "teacher")
    export_generator(unet, DDIMScheduler(), tmp_path / "onestep", timestep=399)
    export_text_model(tiny_radd_transformer(vocab_size=5, hidden_size=16, n_heads=2, n_blocks=1, length=16),
                      CharTokenizer("abcde"), tmp_path / "text")
    for sub in ("teacher", "onestep", "text"):
        d = tmp_path / sub
        assert (d / weights.MANIFEST).read_text() == weights.manifest_text(d)
        load_pipeline(d)
        f = sorted(d.glob("*/diffusion_pytorch_model.safetensors"))[0]
        f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
        with pytest.raises(AssetError, match=f"sha256.*{f}"):
            load_pipeline(d)


def test_one_hash_helper_hashes_each_file_once_per_process(tmp_path, monkeypatch):
    hashed = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert disback_path.file_sha256 is weights.file_sha256  # the path records hash with the one helper
    d = _copy("digits-features", tmp_path, manifest=False)
    f = d / "model.safetensors"
    os.utime(f)  # as if just written (copytree kept the shipped file's old mtime)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert weights.file_sha256(f) == want and hashed == ["model.safetensors"]
    digits.load_reference_stats(d)  # ties train_stats.npz to the net: hashes the net
    assert hashed == ["model.safetensors"] * 2  # just written (mtime is now): never trusted from the cache
    old = time.time() - 3600
    os.utime(f, (old, old))
    assert DigitsFeatures(d).sha256 == want and weights.file_sha256(f) == want
    digits.load_reference_stats(d)
    assert hashed == ["model.safetensors"] * 3  # an old file: hashed once, then cached by (size, mtime, inode)
    with open(f, "r+b") as h:  # an in-place change keeps the inode: the new mtime invalidates the entry
        h.seek(-1, 2)
        h.write(bytes([f.read_bytes()[-1] ^ 1]))
    assert weights.file_sha256(f) != want and len(hashed) == 4
