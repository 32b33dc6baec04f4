"""Image files are written in the format their suffix names (``--output s.jpg`` is a JPEG, not
PNG bytes under a .jpg name), and an unknown suffix is refused before any work, naming the
accepted suffixes."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.checks import IMAGE_FORMATS
from diffkit.cli import main
from diffkit.images import save_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 8, 8, generator=g) * 2 - 1


@pytest.mark.parametrize("suffix", list(IMAGE_FORMATS) + [".JPG"])
def test_save_grid_writes_the_format_its_suffix_names(suffix, tmp_path):
    path = tmp_path / f"grid{suffix}"
    assert save_grid(_images(), str(path), upscale=2) == str(path)
    with Image.open(path) as im:
        assert im.format == IMAGE_FORMATS[suffix.lower()]
        assert im.size == (2 * (2 * 8 + 1) + 1,) * 2  # 2x2 grid of 16-px tiles, 1-px padding
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary sibling left


def test_lossless_formats_read_back_exactly(tmp_path):
    from diffkit.images import make_grid

    for suffix in (".png", ".bmp", ".tif"):
        save_grid(_images(), str(tmp_path / f"g{suffix}"))
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"g{suffix}").convert("RGB")), make_grid(_images()))


@pytest.mark.parametrize("name", ["grid.xyz", "grid", "grid.png.gz"])
def test_unknown_suffix_is_refused_naming_the_accepted_ones(name, tmp_path):
    with pytest.raises(ValueError, match=r"accepted: \.png, \.jpg, \.jpeg, \.webp, \.bmp, \.tif, \.tiff"):
        save_grid(_images(), str(tmp_path / name))
    assert list(tmp_path.iterdir()) == []


COMMANDS = {
    "sample": ["sample", "--model", "digits-unet", "--steps", "1", "--n", "2"],
    "sample-edm": ["sample-edm", "--model", "digits-unet", "--nfe", "1", "--n", "2"],
    "edit": ["edit", "--digit", "13", "--target", "8", "--steps", "2", "--strength", "1"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_write_the_format_of_their_output_suffix(command, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    assert main(COMMANDS[command] + ["--output", str(out)]) in (0, None)
    with Image.open(out) as im:
        assert im.format == "JPEG"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_an_unknown_output_suffix_before_any_work(command, tmp_path, capsys, monkeypatch):
    import diffkit.pipelines

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the --output suffix was checked")

    monkeypatch.setattr(diffkit.pipelines, "load_pipeline", no_loading)
    with pytest.raises(SystemExit) as e:
        main(COMMANDS[command] + ["--output", str(tmp_path / "out.xyz")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --output" in err and "'.xyz'" in err and ".png, .jpg, .jpeg" in err
    assert list(tmp_path.iterdir()) == []
