"""What diffkit writes gets the permissions of a plain ``open(..., "w")`` / ``mkdir`` under the
process's umask. safetensors' ``save_file`` (and through it diffusers' ``save_pretrained``)
and ``tempfile.mkstemp`` create files with mode 0600 whatever the umask; a model folder that
only its owner can read is useless to the group or the web server it was exported for.

The umask here is 027 (not the usual 022), so a writer that hard-codes 0644 fails too."""

import os
import stat

import pytest
import torch

from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

pytestmark = pytest.mark.usefixtures("one_thread")

UMASK = 0o027
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


@pytest.fixture
def umask027():
    old = os.umask(UMASK)
    yield
    os.umask(old)


def _modes(root):
    """{relative path: mode} of every file and folder under ``root`` (root included)."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
    return out


def _assert_plain(root):
    modes = _modes(root)
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (DIR_MODE if os.path.isdir(os.path.join(root, p)) else FILE_MODE)}
    assert not wrong, f"expected files {oct(FILE_MODE)} / folders {oct(DIR_MODE)} under umask {oct(UMASK)}: {wrong}"
    assert any(p.endswith(".safetensors") for p in modes) or any(p.endswith(".json") for p in modes)


def _class_pipeline(out):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler()).save_pretrained(str(out))


def _one_step_export(out):
    from diffkit.pipelines.one_step import export_generator

    export_generator(tiny_unet2d(num_classes=10), tiny_ddim_scheduler(), out, timestep=399, facts={"steps": 0})


def _teacher_export(out):
    from diffkit.commands.train_teacher import build_scheduler, build_unet, export_pipeline

    export_pipeline(build_unet("tiny", seed=0), build_scheduler(), out, {"steps": 0})


def _text_pipeline(out):
    from diffkit.pipelines.discrete import load_text_pipeline

    load_text_pipeline("tiny").save_pretrained(str(out))  # transformer, scheduler and tokenizer/


def _radd_transformer(out):
    from diffkit.models.radd import tiny_radd_transformer

    tiny_radd_transformer().save_pretrained(str(out))


def _radd_official(out):
    from diffkit.models.radd import save_official_checkpoint, tiny_radd_transformer

    save_official_checkpoint(tiny_radd_transformer(), out)


def _feature_net(out):
    from diffkit.models.digits_features import DigitsFeatureNet

    DigitsFeatureNet(channels=(4, 4, 8), feature_dim=8).save(out)


def _trainer_checkpoint(out):
    from diffkit.commands.train_teacher import build_scheduler, build_unet
    from diffkit.data import digits_tensors
    from diffkit.train import DDPMEpsLoss, IndexedDataSource, Trainer, TrainConfig

    x, y = digits_tensors("train")
    loss = DDPMEpsLoss(build_scheduler().config, seed=0, label_dropout=0.1, null_class=10)
    cfg = TrainConfig(max_steps=1, batch_size=4, lr=1e-3, warmup_steps=0, seed=0, checkpoint_every=1, progress=False)
    Trainer(build_unet("tiny", seed=0), loss, IndexedDataSource(x, y, seed=0), cfg, out).fit()


def _inversion_record(out):
    from diffkit.samplers.inversion import InversionResult

    out.mkdir()
    InversionResult(torch.zeros(1, 2, 4, 4, dtype=torch.float64), torch.ones(1, 2, 4, 4, dtype=torch.float64),
                    [900, 800], {"gamma": 0.94}).save(out / "inversion.safetensors")


WRITERS = {"InversionResult.save (diffkit invert)": _inversion_record,
           "ClassConditionalPipeline.save_pretrained": _class_pipeline, "distill export_generator": _one_step_export,
           "train-teacher export": _teacher_export, "text pipeline save_pretrained": _text_pipeline,
           "RADDTransformer.save_pretrained": _radd_transformer, "save_official_checkpoint": _radd_official,
           "DigitsFeatureNet.save": _feature_net, "Trainer checkpoint": _trainer_checkpoint}


@pytest.mark.parametrize("name", list(WRITERS))
def test_exports_and_checkpoints_get_the_umasks_permissions(name, tmp_path, umask027):
    out = tmp_path / "out"
    WRITERS[name](out)
    _assert_plain(out)


def test_save_safetensors_is_a_plain_atomic_write_that_reads_back(tmp_path, umask027):
    from safetensors.torch import load_file, safe_open

    from diffkit.atomic import save_safetensors

    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    save_safetensors(tensors, path, metadata={"k": "v"})
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"k": "v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary sibling left
    # rewriting keeps the file's own mode, as a plain open(..., "w") does
    os.chmod(path, 0o600)
    save_safetensors(tensors, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_umask_permissions_sets_new_entries_and_keeps_existing_ones(tmp_path, umask027):
    from safetensors.torch import save_file

    from diffkit.atomic import umask_permissions

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "kept.txt").write_text("x")
    os.chmod(folder / "kept.txt", 0o604)
    with umask_permissions(folder):
        (folder / "sub").mkdir(mode=0o700)
        save_file({"a": torch.zeros(1)}, str(folder / "sub" / "w.safetensors"))  # 0600 by itself
        save_file({"a": torch.zeros(1)}, str(folder / "kept.txt"))                # replaces an existing file
    modes = _modes(folder)
    assert modes == {".": DIR_MODE, "kept.txt": 0o604, "sub": DIR_MODE, os.path.join("sub", "w.safetensors"): FILE_MODE}
