"""diffkit.analysis: conservativity, conservative/gauge split and intrinsic dimension of score fields.

Works on any score function ``s(x, t)`` over a noising process (VP or VE; see
:mod:`.processes`), including diffusers UNets through :class:`UNetScore` (VP score
s = -ε/std_vp). Background and the closed forms the tests use: Horvat & Pfister, "On
gauge freedom, conservativity and intrinsic dimensionality estimation in diffusion
models" (ICLR 2024, arXiv 2402.03845).

Modules: ``processes`` (VE/VP processes, probability flow), ``score`` (interface, UNet
adapter), ``jacobian`` (J, NAsym), ``circulation`` (loop circulation, path dependence),
``gauge`` (potential fit, split, gauge residual, DSM decomposition), ``intrinsic_dim``
(normal-bundle, Jacobian, flow-Jacobian, TwoNN, MLE), ``fixtures`` (exact-score data),
``report`` (the digits report behind ``diffkit analyze``).
"""

from diffkit.analysis.circulation import LoopCirculation, line_integral, loop_circulation, path_dependence
from diffkit.analysis.fixtures import (LinearGaussianManifold, SphereManifold, gauge_field, random_antisymmetric,
                                      rotation_field, scaled_field)
from diffkit.analysis.gauge import (DSMDecomposition, GaugeResidual, GaugeSplit, LocalQuadratic, PotentialFit,
                                    PotentialMLP, PotentialScore, QuadraticPotential, ScoreBank,
                                    conservative_part_linear, dsm_decomposition, fit_local_quadratic, fit_potential,
                                    gauge_residual, gauge_split, local_conservative_part, make_bank)
from diffkit.analysis.intrinsic_dim import (FlowJacobian, IDResult, NBResult, flow_jacobian, jacobian_id, mle_id, nb_id,
                                            nb_spectrum, principal_angles, spectral_gap, twonn_id)
from diffkit.analysis.jacobian import Asymmetry, asymmetry, jacobian
from diffkit.analysis.processes import (DiscreteVPProcess, VEProcess, VPLinearProcess, log_sigma_grid, noise,
                                       pf_step, probability_flow)
from diffkit.analysis.score import UNetScore, math_attention

__all__ = [
    "VEProcess", "VPLinearProcess", "DiscreteVPProcess", "noise", "log_sigma_grid", "pf_step", "probability_flow",
    "UNetScore", "math_attention",
    "jacobian", "asymmetry", "Asymmetry",
    "loop_circulation", "line_integral", "path_dependence", "LoopCirculation",
    "QuadraticPotential", "PotentialMLP", "PotentialScore", "ScoreBank", "make_bank", "fit_potential", "PotentialFit",
    "gauge_split", "GaugeSplit", "gauge_residual", "GaugeResidual", "dsm_decomposition", "DSMDecomposition",
    "conservative_part_linear", "LocalQuadratic", "fit_local_quadratic", "local_conservative_part",
    "spectral_gap", "nb_id", "nb_spectrum", "NBResult", "jacobian_id", "IDResult", "flow_jacobian", "FlowJacobian",
    "twonn_id", "mle_id", "principal_angles",
    "LinearGaussianManifold", "SphereManifold", "gauge_field", "rotation_field", "scaled_field",
    "random_antisymmetric", "conservative_part_linear",
]
