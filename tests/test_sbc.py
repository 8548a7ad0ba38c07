"""Simulation-based calibration (Talts et al. 2018) as a slow test.

The machinery is ``benchmarks/sbc.py``; these tests run it at fixed seeds and
apply a chi-square test of rank uniformity to every ranked quantity, at level
0.001 split over the quantities of a (model, integrator, trajectory) run (Bonferroni). The
same test rejects a deliberately wrong sampler, so it can fail.
"""

import importlib.util
from pathlib import Path

import pytest

from numpyro_s3hmc.integrators import INTEGRATORS
from numpyro_s3hmc.trajectory import TRAJECTORIES

ALPHA = 1e-3
NUM_DRAWS = 99

_spec = importlib.util.spec_from_file_location(
    "sbc", Path(__file__).parents[1] / "benchmarks" / "sbc.py"
)
sbc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sbc)


def p_values(out):
    return {q: sbc.chi_square(r, NUM_DRAWS)[0] for q, r in out["ranks"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("trajectory", TRAJECTORIES)
@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize(
    "model, replicas",
    [("normal_gamma", 400), ("hierarchical", 400), ("scale_location", 400), ("bnn", 200)],
)
def test_sbc_ranks_uniform(model, replicas, integrator, trajectory):
    out = sbc.run_sbc(
        model,
        integrator,
        num_replicas=replicas,
        num_draws=NUM_DRAWS,
        seed=1,
        trajectory=trajectory,
    )
    p = p_values(out)
    assert min(p.values()) > ALPHA / len(p), p


@pytest.mark.slow
def test_sbc_rejects_a_wrong_sampler():
    # ½ log|G_θ(η)| left out of the Metropolis-Hastings energy: the chain targets
    # p(θ, τ | y) |G_θ(τ)|^½ ∝ p · τ_b^4 in this model, and the ranks of τ_b pile up low
    out = sbc.run_sbc("hierarchical", "splitting", num_replicas=400, seed=1, wrong=True)
    p = p_values(out)
    assert p["tau_b"] < ALPHA / len(p), p
