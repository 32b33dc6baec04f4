"""Bad input -> clear errors naming the argument and the accepted values."""

import pytest
import torch
from diffusers import DDIMScheduler

from diffkit.analysis import (LinearGaussianManifold, PotentialMLP, QuadraticPotential, ScoreBank, SphereManifold,
                              UNetScore, VEProcess, VPLinearProcess, asymmetry, fit_potential, flow_jacobian,
                              gauge_field, gauge_residual, jacobian, jacobian_id, log_sigma_grid, loop_circulation,
                              nb_id, spectral_gap)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

PROC = VEProcess(1e-3, 5.0)
FX = LinearGaussianManifold(6, 2, seed=0)
X0 = FX.sample(2, torch.Generator().manual_seed(0))


def test_score_function_returning_the_wrong_shape():
    bad = lambda x, t: x[:, :3]  # noqa: E731
    with pytest.raises(ValueError, match=r"score_fn returned shape \(12, 3\) for an input of shape \(12, 6\)"):
        jacobian(bad, X0, 0.1)
    with pytest.raises(ValueError, match="returned shape"):
        nb_id(bad, PROC, X0, 0.1)
    with pytest.raises(ValueError, match="returned shape"):
        gauge_field(bad, torch.zeros(6, 6, dtype=torch.float64))(X0, torch.full((2,), 0.1))
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        asymmetry(lambda x, t: x.detach().numpy(), X0, 0.1, n_probes=2)


def test_t_outside_the_schedule():
    s = FX.score_fn(PROC)
    with pytest.raises(ValueError, match=r"t=\[10.0\] outside the schedule: accepted 0.001 <= t <= 5"):
        s(X0, 10.0)
    with pytest.raises(ValueError, match=r"t0=.*outside the schedule"):
        nb_id(s, PROC, X0, 1e-5)
    vp = VPLinearProcess()
    with pytest.raises(ValueError, match=r"outside the schedule: accepted 1e-07 <= t <= 1"):
        FX.score_fn(vp)(X0, 1.5)
    with pytest.raises(ValueError, match="std: a VP noise std must be in"):
        vp.t_at_std(1.2)
    with pytest.raises(ValueError, match="a VP noise std must be in"):
        vp.t_at_sigma(1.2)  # the former name
    with pytest.raises(ValueError, match="t_grid"):
        flow_jacobian(s, PROC, X0, [5.0, 1e-6])
    with pytest.raises(ValueError, match=r"t: expected a scalar or 2 times"):
        s(X0, torch.tensor([0.1, 0.2, 0.3]))


def test_unet_score_bad_t_and_labels(tiny_class_unet):
    cfg = DDIMScheduler().config
    with UNetScore(tiny_class_unet, cfg, class_label=1) as score:
        x = torch.zeros(1, 1, 8, 8)
        with pytest.raises(ValueError, match=r"outside the schedule: accepted 0 <= t <= 999"):
            score(x, 1000)
        with pytest.raises(ValueError, match="outside the schedule"):
            score(x, -0.5)
    with pytest.raises(ValueError, match=r"class_label must be in 0..10 \(null class 10\), got 11"):
        UNetScore(tiny_class_unet, cfg, class_label=11)
    with pytest.raises(ValueError, match="class_label is required"):
        UNetScore(tiny_class_unet, cfg)


def test_too_few_probes():
    s = FX.score_fn(PROC)
    with pytest.raises(ValueError, match=r"n_perturb=6 is too few: .* needs n_perturb >= 7 \(D \+ 1"):
        nb_id(s, PROC, X0, 0.01, n_perturb=6)
    assert nb_id(s, PROC, X0, 0.01, n_perturb=6, center=False).svals.shape == (2, 6)
    with pytest.raises(ValueError, match="n_probes must be >= 2"):
        asymmetry(s, X0, 0.01, n_probes=1)
    with pytest.raises(ValueError, match=r"n_cols must be in 2..D=6"):
        flow_jacobian(s, PROC, X0, log_sigma_grid(PROC, 2, 5.0, 0.01), n_cols=1)
    with pytest.raises(ValueError, match="n_quad >= 3"):
        loop_circulation(s, X0, 0.1, 0.1, n_quad=2)


def test_other_bad_arguments():
    s = FX.score_fn(PROC)
    with pytest.raises(ValueError, match=r"gap must be one of \('log', 'abs'\), got 'ratio'"):
        nb_id(s, PROC, X0, 0.01, gap="ratio")
    with pytest.raises(ValueError, match="gap must be one of"):
        jacobian_id(s, PROC, X0, 0.01, gap=0.5)
    with pytest.raises(ValueError, match="svals: expected shape"):
        spectral_gap(torch.ones(3))
    with pytest.raises(ValueError, match="A must be antisymmetric"):
        gauge_field(s, torch.eye(6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"d must be 1 \(circle\) or 2"):
        SphereManifold(10, 3)
    with pytest.raises(ValueError, match="need 1 <= d < D"):
        LinearGaussianManifold(4, 4)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        VEProcess(1.0, 0.5)
    with pytest.raises(ValueError, match="r and x must have the same shape"):
        gauge_residual(torch.zeros(5, 3), torch.zeros(5, 4))
    bank = ScoreBank(X0, torch.full((2,), 0.1, dtype=torch.float64), X0, X0, PROC)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'lbfgs'"):
        fit_potential(bank, QuadraticPotential(6), optimizer="sgd")
    with pytest.raises(ValueError, match="labels are required"):
        PotentialMLP(6, PROC, num_classes=3)(X0, 0.1)


def test_analyze_cli_bad_input(tmp_path, capsys):
    from diffkit.cli import main

    assert main(["analyze", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["analyze", "--classes", "1,x", "--quick", "--output", str(tmp_path / "o")]) == 1
    assert "--classes: expected comma-separated digits" in capsys.readouterr().err
    assert main(["analyze", "--sigma0", "2", "--output", str(tmp_path / "o")]) == 1
    assert "--sigma0 must be in (0, 1)" in capsys.readouterr().err


def test_report_refuses_a_model_of_the_wrong_layout(tmp_path):
    from diffkit.analysis.report import AnalysisConfig, analyze_digits
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_unet2d

    pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10, sample_size=16), DDIMScheduler())
    with pytest.raises(ValueError, match="needs a 1-channel 8×8 UNet"):
        analyze_digits(pipe, str(tmp_path), AnalysisConfig.quick())
    with pytest.raises(ValueError, match="classes must be digits 0..9"):
        analyze_digits(ClassConditionalPipeline(tiny_unet2d(num_classes=10), DDIMScheduler()), str(tmp_path),
                       AnalysisConfig.quick(classes=(3, 12)))
