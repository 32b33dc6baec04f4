"""Exact inversion / regeneration: round trips at 50 steps on tiny SD, SDXL and class-conditional
UNets (float32 and bfloat16 models, float64 state), the saved record, errors, CLI, example."""

import copy
import dataclasses

import pytest
import torch

from diffkit.conditioning import class_guidance, prompt_guidance
from diffkit.denoisers import EpsModel
from diffkit.numerics import NonFiniteOutputError
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.samplers.inversion import (InversionResult, InversionWarning, invert, inversion_window,
                                        model_input_quantum, regenerate, relative_error, snap_to_grid)
from diffkit.testing import tiny_ddim_scheduler
from helpers import ROOT

TOL = 1e-10  # acceptance: 50 steps, γ = 0.94, float64 state


def _model(unet, config, dtype):
    return EpsModel(copy.deepcopy(unet).to(dtype), config)


def _round_trip(model, clean, cond, steps=50, gamma=0.94, strength=1.0):
    result = invert(model, clean, cond, steps=steps, gamma=gamma, strength=strength)
    return relative_error(regenerate(model, result, cond), clean), result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_tiny_sd_guidance_3(tiny_sd, dtype):
    cond = prompt_guidance(tiny_sd, "a photo of a cat", guidance_scale=3.0)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = tiny_sd.vae.encode(image).latent_dist.mean * tiny_sd.vae.config.scaling_factor
    err, result = _round_trip(_model(tiny_sd.unet, tiny_sd.scheduler.config, dtype), latent, cond)
    assert err <= TOL, err
    assert result.settings["nfe"] == 50 and result.timesteps[:2] == [981, 961]
    assert result.z_top.dtype == torch.float64 and torch.isfinite(result.z_top).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_tiny_sdxl(tiny_sdxl, dtype):
    cond = prompt_guidance(tiny_sdxl, "a cat", guidance_scale=3.0, height=32, width=32)
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    err, _ = _round_trip(_model(tiny_sdxl.unet, tiny_sdxl.scheduler.config, dtype), latent, cond)
    assert err <= TOL, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_class_conditional_unet(tiny_class_unet, dtype):
    # the digits teacher's shape and schedule (8×8 grey, 10 classes + null; linear betas, grid
    # 980..0, ᾱ_F = 1) on real digits, whose exact-zero pixels make z at t=0 ≈ 0 where float32 is
    # finer than round-off: without the snapped model input this float32 case loses exactness (3e-8)
    from diffusers import DDIMScheduler

    from diffkit.data import digits_tensors

    x, y = digits_tensors("test")
    cond = class_guidance(tiny_class_unet, y[:4], 3.0)
    err, result = _round_trip(_model(tiny_class_unet, DDIMScheduler(clip_sample=False).config, dtype), x[:4], cond)
    assert err <= TOL, err
    assert result.timesteps[-1] == 0 and (x[:4] == 0).any()


def test_round_trip_shipped_digits_teacher():
    from diffkit.data import digits_tensors
    from diffkit.pipelines import load_pipeline

    pipe = load_pipeline("digits-unet")  # shipped: a missing or broken asset fails here (AssetError), never skips
    x, y = digits_tensors("test")
    cond = class_guidance(pipe.unet, y[:4], 1.0)
    for dtype in (torch.float32, torch.bfloat16):
        err, _ = _round_trip(_model(pipe.unet, pipe.scheduler.config, dtype), x[:4], cond)
        assert err <= TOL, (dtype, err)


def test_strength_window_pair_and_editing(tiny_class_unet):
    model = EpsModel(tiny_class_unet, tiny_ddim_scheduler().config)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cond = class_guidance(tiny_class_unet, [3, 7], 2.0)
    err, result = _round_trip(model, x, cond, steps=10, strength=0.6)
    assert err < 1e-12
    assert result.timesteps == [501, 401, 301, 201, 101, 1] and result.settings["nfe"] == 6  # int(10·0.6) points
    edited = regenerate(model, result, class_guidance(tiny_class_unet, [5, 5], 2.0))
    assert relative_error(edited, x) > 1e-3  # the condition is used: another label edits the image


def test_regenerate_matches_scheduler_sampling(tiny_class_unet):
    # one home, two entrances: the loops and BDIADDIMScheduler run the same recurrence (a float64
    # model, and the scheduler's model sees its input snapped as the loops' does)
    cfg = tiny_ddim_scheduler().config
    model = _model(tiny_class_unet, cfg, torch.float64)
    cond = class_guidance(tiny_class_unet, [1, 4], 1.0)
    quantum = model_input_quantum(model)
    s = BDIADDIMScheduler.from_config(cfg, gamma=0.94)
    s.set_timesteps(20)
    z = [torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))]
    for t in s.timesteps:
        z.append(s.step(model.raw(snap_to_grid(z[-1], quantum), t, cond), t, z[-1]).prev_sample)
    result = invert(model, z[-1], cond, steps=20, gamma=0.94)
    result = dataclasses.replace(result, z_top=z[0], z_below=z[1])  # the scheduler's pair at (981, 931)
    assert relative_error(regenerate(model, result, cond), z[-1]) < 1e-12


def test_save_load_round_trip(tmp_path, tiny_class_unet):
    model = EpsModel(tiny_class_unet, tiny_ddim_scheduler().config)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    cond = class_guidance(tiny_class_unet, [2], 1.0)
    result = invert(model, x, cond, steps=10, gamma=0.95, extra={"labels": [2]})
    path = result.save(tmp_path / "sub" / "inv.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["inv.safetensors"]  # atomic: no temp file left
    loaded = InversionResult.load(path)
    assert torch.equal(loaded.z_top, result.z_top) and torch.equal(loaded.z_below, result.z_below)
    assert torch.equal(loaded.clean, result.clean) and loaded.timesteps == result.timesteps
    assert loaded.settings == result.settings and loaded.settings["extra"] == {"labels": [2]}
    assert torch.equal(regenerate(model, loaded, cond), regenerate(model, result, cond))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        InversionResult.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        InversionResult.load(tmp_path / "missing.safetensors")


def test_bad_input(tiny_class_unet):
    cfg = tiny_ddim_scheduler().config
    model = EpsModel(tiny_class_unet, cfg)
    x = torch.zeros(1, 1, 8, 8)
    cond = class_guidance(tiny_class_unet, [0], 1.0)
    for gamma in (0.0, 1.2, -1):
        with pytest.raises(ValueError, match="gamma"):
            invert(model, x, cond, steps=4, gamma=gamma)
    with pytest.warns(InversionWarning, match=r"\(1/gamma\)\^3"):
        invert(model, x, cond, steps=4, gamma=0.7)
    for strength in (0.0, 1.5, 0.1):
        with pytest.raises(ValueError, match="strength"):
            invert(model, x, cond, steps=4, strength=strength)
    with pytest.raises(TypeError, match="EpsModel"):
        invert(tiny_class_unet, x, cond, steps=4)
    result = invert(model, x, cond, steps=4, gamma=0.95)
    with pytest.raises(ValueError, match="steps=5 differs"):
        regenerate(model, result, cond, steps=5)
    with pytest.raises(ValueError, match="grid"):
        regenerate(EpsModel(tiny_class_unet, tiny_ddim_scheduler(timestep_spacing="trailing").config), result, cond)
    with pytest.raises(ValueError, match="grid"):
        regenerate(model, result, cond, timesteps=[999, 500, 250, 1])
    with pytest.raises(ValueError, match="conditioned"):
        regenerate(model, result)
    with pytest.raises(ValueError, match="unconditional branch"):
        invert(model, x, cond.cond, steps=4, guidance_scale=2.0)
    broken = copy.deepcopy(tiny_class_unet)
    with torch.no_grad():
        broken.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match=r"step 0 \(timestep 0\)"):
        invert(EpsModel(broken, cfg), x, cond, steps=4)
    with pytest.raises(NonFiniteOutputError, match=r"regeneration contains NaN or inf at step 0 \(timestep 501\)"):
        regenerate(EpsModel(broken, cfg), result, cond)


def test_inversion_window_matches_img2img_convention():
    from diffkit.schedules import VPSchedule

    sched = VPSchedule.from_config(tiny_ddim_scheduler().config)
    assert inversion_window(sched, 50, 0.8)[:2] == [781, 761] and len(inversion_window(sched, 50, 0.8)) == 40
    assert inversion_window(sched, 50, 1.0)[0] == 981 and inversion_window(sched, 50, 1.0)[-1] == 1


@pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only slows them
@pytest.mark.parametrize("method", ["bdia", "edict"])
def test_float64_model_round_trips_as_exactly_as_a_float32_one(tiny_sd, method):
    # the model input is snapped for float64 models too: without it the network's sensitivity
    # multiplies the ~1e-14 differences between the two directions' latents at every step
    from diffkit.samplers import edict

    cond = prompt_guidance(tiny_sd, "a photo of a cat", guidance_scale=3.0)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = tiny_sd.vae.encode(image).latent_dist.mean * tiny_sd.vae.config.scaling_factor
    err = {}
    for dtype in (torch.float32, torch.float64):
        model = _model(tiny_sd.unet, tiny_sd.scheduler.config, dtype)
        if method == "bdia":
            result = invert(model, latent, cond, steps=6, gamma=0.94)
            assert result.settings["model_input_quantum"] == 2.0 ** -16
            err[dtype] = relative_error(regenerate(model, result, cond), latent)
        else:
            err[dtype] = relative_error(edict.regenerate(model, edict.invert(model, latent, cond, steps=6), cond),
                                        latent)
    assert err[torch.float64] <= 2 * err[torch.float32] and err[torch.float64] <= 1e-12, err


@pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only slows them
def test_regenerate_uses_the_callers_guidance_scale(tiny_class_unet):
    model = EpsModel(tiny_class_unet, tiny_ddim_scheduler().config)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    at = lambda w: class_guidance(tiny_class_unet, [3, 7], w)  # noqa: E731
    result = invert(model, x, at(2.0), steps=6, gamma=0.94)
    edited = regenerate(model, result, at(4.0))  # editing with another guidance scale
    assert torch.equal(edited, regenerate(model, result, at(2.0), guidance_scale=4.0))
    assert relative_error(edited, x) > 1e-4
    assert relative_error(regenerate(model, result, at(2.0)), x) < 1e-12
    # a condition that carries no scale (a bare Condition) gets the stored one, 2, which needs an uncond branch
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs an unconditional branch"):
        regenerate(model, result, at(2.0).cond)


@pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only slows them
def test_cli_sample_from_inversion_uses_the_given_guidance(tmp_path, tiny_class_unet, tiny_unet, capsys):
    from diffkit.cli import main
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler()).save_pretrained(tmp_path / "m")
    inv, png = tmp_path / "inv.safetensors", tmp_path / "r.png"
    assert main(["invert", "--model", str(tmp_path / "m"), "--digit", "3", "--steps", "6", "--guidance", "2",
                 "--no-check", "--output", str(inv)]) == 0
    capsys.readouterr()

    def error(*extra):
        assert main(["sample", "--from-inversion", str(inv), "--output", str(png), *extra]) == 0
        return float(capsys.readouterr().out.split("relative error vs the inverted input ")[1].split()[0])

    assert error() < 1e-10 and error("--guidance", "2") < 1e-10  # the inversion's scale is the default
    assert error("--guidance", "4") > 1e-4  # another scale edits; it is not ignored
    ClassConditionalPipeline(tiny_unet, tiny_ddim_scheduler()).save_pretrained(tmp_path / "u")  # unconditional
    assert main(["invert", "--model", str(tmp_path / "u"), "--digit", "3", "--steps", "6", "--no-check",
                 "--output", str(inv)]) == 0
    assert main(["sample", "--from-inversion", str(inv), "--guidance", "3", "--output", str(png)]) == 1
    assert "--guidance" in capsys.readouterr().err


def test_cli_invert_then_sample_from_inversion(tmp_path, tiny_class_unet, capsys):
    from diffkit.cli import main
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler()).save_pretrained(tmp_path / "m")
    inv = tmp_path / "inv.safetensors"
    assert main(["invert", "--model", str(tmp_path / "m"), "--digit", "3", "--steps", "20", "--output", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "round-trip relative error" in out and inv.exists()
    err = float(out.split("round-trip relative error (regenerate vs input): ")[1].split()[0])
    assert err < 1e-10
    png = tmp_path / "r.png"
    assert main(["sample", "--from-inversion", str(inv), "--output", str(png)]) == 0
    assert png.exists() and "relative error vs the inverted input" in capsys.readouterr().out
    assert main(["sample", "--from-inversion", str(inv), "--labels", "8", "--output", str(png)]) == 0  # an edit
    assert main(["sample", "--from-inversion", str(inv), "--steps", "10", "--output", str(png)]) == 1
    assert "differs from the inversion's 20" in capsys.readouterr().err
    assert main(["invert", "--model", str(tmp_path / "m"), "--digit", "3", "--gamma", "1.5",
                 "--output", str(inv)]) == 1
    assert "gamma must be a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("assets", ["shipped", "missing"])
def test_demo_step_reports_round_trip(tmp_path, monkeypatch, assets):
    from diffkit.cli import main

    if assets == "missing":  # the demo falls back to a tiny random UNet
        monkeypatch.setenv("DIFFKIT_ASSETS", str(tmp_path / "no-assets"))
    assert main(["demo", "--output", str(tmp_path), "--quick", "--only", "invert"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "round-trip relative error" in report and (tmp_path / "inversion_bdia.png").exists()
    if assets == "missing":
        assert "tiny random-weight UNet (assets/digits-unet not available yet)" in report
    err = float(report.split("round-trip relative error ")[1].split()[0])
    assert err <= TOL


# ---------------------------------------------------------------------- one protocol, one table
FIXTURE_V1 = ROOT / "tests" / "data" / "inversion_v1.safetensors"  # written by `diffkit invert` before format 2


@pytest.mark.usefixtures("one_thread")
def test_every_method_of_the_table_follows_the_protocol(tmp_path, tiny_class_unet):
    import inspect

    from diffkit.samplers.inversion_base import InversionRecord
    from diffkit.samplers.inversion_methods import INVERSION_METHODS, get_inversion_method, load_record

    assert list(INVERSION_METHODS) == ["bdia", "edict", "ddim-inversion"]
    cfg = tiny_ddim_scheduler().config
    model = EpsModel(tiny_class_unet, cfg)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    cond = class_guidance(tiny_class_unet, [1, 6], 2.0)
    for name, method in INVERSION_METHODS.items():
        impl = method.implementation
        inv = inspect.signature(impl.invert).parameters
        assert list(inv)[:3] == ["model", "clean_latent", "condition"], name
        for kw in ("steps", "strength", "guidance_scale", "extra", *method.options):
            assert inv[kw].kind is inspect.Parameter.KEYWORD_ONLY, (name, kw)
        assert set(impl.OPTIONS) == set(method.options), name
        reg = inspect.signature(impl.regenerate).parameters
        assert list(reg)[:3] == ["model", "result", "condition"] and reg["guidance_scale"].kind.name == "KEYWORD_ONLY"

        record = method.invert(model, x, cond, steps=6, strength=0.8, extra={"labels": [1, 6]}, scheduler_config=cfg)
        assert isinstance(record, InversionRecord) and type(record) is method.record_type and record.METHOD == name
        assert record.timesteps == [499, 333, 167, 1]
        assert len(record.latents) == len(record.LATENTS) and record.batch_size == 2
        assert record.settings["steps"] == 6 and record.settings["extra"] == {"labels": [1, 6]}
        assert record.settings["nfe"] == method.nfe_per_step * len(record.timesteps)
        out = method.regenerate(model, record, cond)
        err = relative_error(out, x)
        assert (err <= TOL) if method.exact else (err > 1e-4), (name, err)

        path = record.save(tmp_path / f"{name}.safetensors")
        loaded = load_record(path)
        assert type(loaded) is type(record) and loaded.settings == record.settings
        assert loaded.timesteps == record.timesteps and torch.equal(loaded.clean, record.clean)
        assert all(torch.equal(a, b) for a, b in zip(loaded.latents, record.latents))
        assert torch.equal(method.regenerate(model, loaded, cond), out)  # a saved record regenerates identically
        assert get_inversion_method(name) is method
    with pytest.raises(ValueError, match=r"holds a 'edict' inversion, not 'bdia'"):
        InversionResult.load(tmp_path / "edict.safetensors")
    with pytest.raises(TypeError, match="method 'bdia' regenerates a InversionResult"):
        get_inversion_method("bdia").regenerate(model, load_record(tmp_path / "edict.safetensors"), cond)


def test_unknown_methods_and_options_are_refused_naming_the_accepted_ones(tiny_class_unet):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.pipelines.editing import edit
    from diffkit.samplers.inversion_methods import get_inversion_method

    with pytest.raises(ValueError, match="method must be one of bdia, edict, ddim-inversion, got 'null-text'"):
        get_inversion_method("null-text")
    pipe = ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler())
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="method must be one of bdia, edict, ddim-inversion"):
        edit(pipe, x, 3, steps=4, method="null-text")
    with pytest.raises(ValueError, match=r"'edict' does not take gamma; its options: mix, leapfrog, state_dtype"):
        edit(pipe, x, 3, steps=4, method="edict", gamma=0.9)
    with pytest.raises(ValueError, match=r"method 'ddim-inversion' does not take mix; its options: state_dtype"):
        edit(pipe, x, 3, steps=4, method="ddim-inversion", mix=0.9)


@pytest.mark.usefixtures("one_thread")  # the fixture was inverted with one torch thread
def test_format_version_1_file_from_the_old_diffkit_invert_still_loads_and_regenerates(tmp_path):
    from diffkit.samplers.inversion_base import FORMAT_VERSION
    from diffkit.samplers.inversion_methods import load_record
    from safetensors import safe_open

    from diffkit.testing import tiny_unet2d

    with safe_open(str(FIXTURE_V1), "pt") as f:
        assert '"format_version": 1' in f.metadata()["diffkit_inversion"]
    for record in (load_record(FIXTURE_V1), InversionResult.load(FIXTURE_V1)):
        assert type(record) is InversionResult and record.timesteps == [499, 333, 167, 1]
        assert record.settings["gamma"] == 0.94 and record.settings["extra"]["labels"] == [8]
        unet = tiny_unet2d(num_classes=10)  # the model the fixture was inverted with
        back = regenerate(EpsModel(unet, tiny_ddim_scheduler().config), record, class_guidance(unet, [8], 2.0))
        # exact (1.5e-16) where the float32 network's kernels round as the writer's did (same CPU, one
        # thread); elsewhere the network's own rounding (a thread count, a CPU: ~1e-6) reaches the result
        assert relative_error(back, record.clean) <= 1e-5
    saved = record.save(tmp_path / "v2.safetensors")  # saving writes the current version, with the method
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()["diffkit_inversion"]
    assert f'"format_version": {FORMAT_VERSION}' in meta and '"method": "bdia"' in meta
    from diffkit.atomic import save_safetensors

    save_safetensors({"z_top": record.z_top, "z_below": record.z_below}, tmp_path / "v9.safetensors",
                     metadata={"diffkit_inversion": meta.replace(f'"format_version": {FORMAT_VERSION}',
                                                                 '"format_version": 9')})
    with pytest.raises(ValueError, match="inversion format version 9, this diffkit reads versions 1, 2"):
        load_record(tmp_path / "v9.safetensors")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["bdia", "edict", "ddim-inversion"])
def test_cli_invert_any_method_on_a_vae_model_then_sample_from_inversion(tmp_path, tiny_sd, method, capsys):
    from PIL import Image

    from diffkit.cli import main

    tiny_sd.save_pretrained(tmp_path / "sd")
    img = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "cat.png")
    inv, png = tmp_path / "inv.safetensors", tmp_path / "r.png"
    assert main(["invert", "--model", str(tmp_path / "sd"), "--image", str(tmp_path / "cat.png"), "--prompt", "a cat",
                 "--method", method, "--steps", "4", "--output", str(inv)]) == 0
    out = capsys.readouterr().out
    err = float(out.split("round-trip relative error (latent): ")[1].split()[0])
    assert (err < 1e-9) if method != "ddim-inversion" else (err > 1e-4), out
    assert main(["sample", "--from-inversion", str(inv), "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert float(out.split("latent relative error vs the inverted input ")[1].split()[0]) == pytest.approx(err)
    assert png.is_file()
    assert main(["sample", "--from-inversion", str(inv), "--prompt", "a dog", "--output", str(png)]) == 0  # an edit
    other = "--mix" if method == "bdia" else "--gamma"
    assert main(["invert", "--model", str(tmp_path / "sd"), "--image", str(tmp_path / "cat.png"), "--prompt", "a cat",
                 "--method", method, other, "0.9", "--output", str(tmp_path / "x.safetensors")]) == 1
    assert f"method {method!r} does not take {other}; its options: " in capsys.readouterr().err


def test_cli_method_choices_come_from_the_table(tmp_path, capsys):
    from diffkit.cli import main

    for command in ("invert", "edit"):
        with pytest.raises(SystemExit) as e:
            main([command, "--model", "digits-unet", "--method", "null-text", "--output", str(tmp_path / "x")])
        assert e.value.code == 2
        assert "invalid choice: 'null-text' (choose from bdia, edict, ddim-inversion)" in \
            capsys.readouterr().err.replace("'bdia', 'edict', 'ddim-inversion'", "bdia, edict, ddim-inversion")
