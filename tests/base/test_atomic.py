"""diffkit.atomic: folder swaps keep what they should and leave no temporary siblings."""

import os

import pytest

from diffkit.atomic import atomic_path, replace_dir, staging_dir, write_text_atomically


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_replace_dir_carries_over_files_the_writer_does_not_produce(tmp_path):
    out = tmp_path / "model"
    (out / "unet").mkdir(parents=True)
    (out / "unet" / "w.txt").write_text("old weights")
    (out / "unet" / "stale.txt").write_text("from the old export")
    (out / "README.md").write_text("card")
    tmp = staging_dir(out)
    (tmp / "unet").mkdir()
    (tmp / "unet" / "w.txt").write_text("new weights")
    replace_dir(tmp, out, produced=("unet",))
    # the produced entry is replaced whole (no stale file inside it); the card survives
    assert _tree(out) == {"unet/w.txt": "new weights", "README.md": "card"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp-/.old- leftovers


def test_replace_dir_without_produced_replaces_everything(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("card")
    tmp = staging_dir(out)
    (tmp / "a.txt").write_text("a")
    replace_dir(tmp, out)
    assert _tree(out) == {"a.txt": "a"}


def test_staging_dir_starts_empty_and_new_folder_is_created(tmp_path):
    out = tmp_path / "deep" / "model"
    tmp = staging_dir(out)
    (tmp / "junk").write_text("left by a killed run")
    tmp = staging_dir(out)  # a rerun starts from an empty staging folder
    assert list(tmp.iterdir()) == []
    (tmp / "x").write_text("1")
    replace_dir(tmp, out, produced=("x",))
    assert _tree(out) == {"x": "1"}


def test_write_text_atomically_overwrites_in_place(tmp_path):
    p = tmp_path / "latest"
    write_text_atomically(p, "step-1\n")
    write_text_atomically(p, "step-2\n")
    assert p.read_text() == "step-2\n" and [q.name for q in tmp_path.iterdir()] == ["latest"]


def test_atomic_path_renames_a_temporary_sibling_with_the_same_suffix(tmp_path):
    p = tmp_path / "figure.png"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
        assert p.read_bytes() == b"old"  # nothing visible until the block ends
        tmp.write_bytes(b"new")
    assert p.read_bytes() == b"new" and [q.name for q in tmp_path.iterdir()] == ["figure.png"]
    assert os.stat(p).st_mode & 0o777 == 0o640  # a rewrite keeps the file's mode


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_atomic_path_failure_leaves_the_old_file_and_no_temporary(tmp_path, error):
    p = tmp_path / "report.json"
    p.write_text("complete old report")
    with pytest.raises(type(error)):
        with atomic_path(p) as tmp:
            tmp.write_text("half a new rep")
            raise error
    assert p.read_text() == "complete old report"
    assert [q.name for q in tmp_path.iterdir()] == ["report.json"]


def test_write_text_atomically_failure_leaves_no_temporary(tmp_path):
    p = tmp_path / "x.txt"
    with pytest.raises(TypeError):
        write_text_atomically(p, b"bytes are not text")
    assert list(tmp_path.iterdir()) == []
