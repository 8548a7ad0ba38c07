"""Hyperpriors beyond the Gamma precision: partition and exact prior-only funnels.

Each family's funnel is h ~ prior, θ_i | h ~ Normal(0, s(h)), i = 1..D, with s(h) = h
(a scale), √h (a variance) or 1/√h (a precision), and no data: the posterior is the
prior, so E[log h] is known in closed form and E[h / (1 + h)] by quadrature. The
checks are MCSE z-scores with fixed seeds (see ``exact_answers.assert_mean``).
"""

import functools

import numpy as np
import pytest
from exact_answers import assert_mean
from scipy import integrate, special, stats

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC, partition_sites

# The sampler's machinery in the model's own coordinates: coordinates="auto", the default,
# would non-centre the prior-dominated groups here (bypassing the semi-separable metric
# these tests check) and add a pilot run and its compilation to every test; it is tested
# in test_coupled_metric.py, test_exact.py, test_bnn*.py, test_discrete_and_missing.py
# and by the examples and the demo.
S3HMC = functools.partial(S3HMC, coordinates="centred")


EULER = np.euler_gamma

# name: (prior, how h enters the child, E[log h], the prior in scipy)
FAMILIES = {
    "halfnormal": (
        dist.HalfNormal(1.0),
        "scale",
        -(EULER + np.log(2.0)) / 2,
        stats.halfnorm(),
    ),
    "halfcauchy": (dist.HalfCauchy(1.0), "scale", 0.0, stats.halfcauchy()),
    "exponential": (dist.Exponential(2.0), "scale", -EULER - np.log(2.0), stats.expon(scale=0.5)),
    "lognormal": (dist.LogNormal(0.5, 1.0), "scale", 0.5, stats.lognorm(1.0, scale=np.exp(0.5))),
    "invgamma": (
        dist.InverseGamma(3.0, 2.0),
        "variance",
        np.log(2.0) - special.digamma(3.0),
        stats.invgamma(3.0, scale=2.0),
    ),
    "gamma_scale": (
        dist.Gamma(2.0, 2.0),
        "scale",
        special.digamma(2.0) - np.log(2.0),
        stats.gamma(2.0, scale=0.5),
    ),
    "gamma_precision": (
        dist.Gamma(3.0, 2.0),
        "precision",
        special.digamma(3.0) - np.log(2.0),
        stats.gamma(3.0, scale=0.5),
    ),
}
POWER = {"scale": 1.0, "variance": 0.5, "precision": -0.5}  # s(h) = h ** POWER
FISHER = {"scale": 2.0, "variance": 0.5, "precision": 0.5}  # ½ (∂ log P / ∂η)² per child


def funnel_block(name, dim, child="normal"):
    prior, role, _, _ = FAMILIES[name]
    h = numpyro.sample(f"h_{name}", prior)
    scale = h ** POWER[role]
    fn = dist.Normal(0.0, scale) if child == "normal" else dist.StudentT(NU, 0.0, scale)
    numpyro.sample(f"theta_{name}", fn.expand([dim]).to_event(1))


NU = 5.0


def all_funnels(dim=20):
    """Every family's funnel side by side (independent blocks), and a StudentT child."""
    for name in FAMILIES:
        funnel_block(name, dim)
    h = numpyro.sample("h_student", dist.HalfNormal(1.0))
    numpyro.sample("theta_student", dist.StudentT(NU, 0.0, h).expand([dim]).to_event(1))


def bounded_mean(name):
    """E[h / (1 + h)] under the prior, by quadrature."""
    law = FAMILIES[name][3]
    return integrate.quad(lambda h: h / (1 + h) * law.pdf(h), 0, np.inf, limit=200)[0]


# --- the partition ---------------------------------------------------------------------


def test_every_family_is_a_hyperparameter_with_the_fisher_constant():
    p = partition_sites(all_funnels)
    assert set(p.hyper) == {f"h_{n}" for n in FAMILIES} | {"h_student"}
    assert set(p.params) == {f"theta_{n}" for n in FAMILIES} | {"theta_student"}
    for name, (prior, role, _, _) in FAMILIES.items():
        h = p.hyper_sites[f"h_{name}"]
        assert h.role == role and h.prior == type(prior).__name__
        assert int(h.q) == 20
        k = prior.concentration - 1 if role == "precision" else 0.0  # α − 1: Gamma precision
        np.testing.assert_allclose(h.c, 20 * FISHER[role] + k, rtol=1e-6)
        assert h.governs == (f"theta_{name}",)
        assert p.param_sites[f"theta_{name}"].governed.all()
    # Student-t children: 2ν/(ν + 3) per scale child in log-scale coordinates
    student = p.hyper_sites["h_student"]
    np.testing.assert_allclose(student.c, 20 * 2 * NU / (NU + 3), rtol=1e-6)
    text = str(p)
    for name in FAMILIES:
        assert f"h_{name}" in text
    assert "HalfCauchy" in text and "scale" in text and "variance" in text


def test_gamma_precision_keeps_the_papers_constant():
    def model():
        tau = numpyro.sample("tau", dist.Gamma(3.5, 1.0).expand([2]).to_event(1))
        numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([7, 2]).to_event(2))

    h = partition_sites(model).hyper_sites["tau"]
    np.testing.assert_array_equal(h.q, [7, 7])
    np.testing.assert_array_equal(h.c, [7 / 2 + 3.5 - 1, 7 / 2 + 3.5 - 1])  # Q/2 + α − 1
    assert h.role == "precision"


def eight_schools(sigma=jnp.array([15.0, 10, 16, 11, 9, 11, 10, 18])):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", 8):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=jnp.zeros(8))


def test_scale_hyperprior_with_location_parent():
    p = partition_sites(eight_schools)
    assert p.hyper == ("tau",)
    h = p.hyper_sites["tau"]
    assert (h.role, h.prior, int(h.q), float(h.c)) == ("scale", "HalfCauchy", 8, 16.0)
    assert p.param_sites["theta"].governed_by == ("tau",)
    assert p.param_sites["theta"].governed.all()  # its scale depends on τ only


def test_children_that_are_not_covered_leave_a_plain_parameter():
    def model(y=jnp.ones(4)):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))  # a Poisson rate: no scale
        numpyro.sample("k", dist.Poisson(rate), obs=jnp.array([1.0, 2.0]))
        s = numpyro.sample("s", dist.HalfNormal(1.0))  # scale of a Laplace: not covered
        numpyro.sample("z", dist.Laplace(0.0, s).expand([3]))
        nu = numpyro.sample("nu", dist.Exponential(0.1))  # a df is not a scale
        numpyro.sample("y", dist.StudentT(nu, 0.0, 1.0), obs=y)

    p = partition_sites(model)
    assert p.hyper == ()
    assert all(p.param_sites[k].positive for k in ("rate", "s", "nu"))
    assert "scales no Normal or StudentT child" in str(p)


def test_a_scale_that_also_depends_on_a_parameter_does_not_govern():
    def model():
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("w", dist.Normal(0.0, sigma * jnp.exp(x)).expand([3]))

    p = partition_sites(model)
    assert p.hyper == ()
    assert not p.param_sites["w"].governed.any()


def test_observed_children_count_and_can_be_left_out():
    def model(y=jnp.zeros(6)):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.Exponential(1.0))
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    h = partition_sites(model).hyper_sites["sigma"]
    assert (h.role, int(h.q), float(h.c), h.governs) == ("scale", 6, 12.0, ("y",))
    with pytest.warns(UserWarning, match="falls back"):
        h = partition_sites(model, count_observations=False).hyper_sites["sigma"]
    # no counted child: c = Fisher (0) + α, α = 1 for a non-Gamma prior
    assert (int(h.q), float(h.c)) == (0, 1.0) and h.fallback.all()


def test_hyper_sites_mapping_adds_and_removes():
    def model():
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        numpyro.sample("w", dist.Normal(0.0, sigma).expand([3]))
        numpyro.sample("v", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([2]))
        numpyro.sample("k", dist.Poisson(rate), obs=1.0)

    assert partition_sites(model).hyper == ("sigma", "tau")
    with pytest.warns(UserWarning, match=r"\['rate'\].*falls back"):
        p = partition_sites(model, hyper_sites={"sigma": False, "rate": True})
    assert p.hyper == ("rate", "tau")
    assert not p.param_sites["w"].governed.any()  # scaled by a parameter now
    assert float(p.hyper_sites["rate"].c) == 2.0  # no child: fallback Fisher 0 + α
    assert partition_sites(model, hyper_sites=("sigma",)).hyper == ("sigma",)
    with pytest.raises(ValueError, match="'w'.*positive"):
        partition_sites(model, hyper_sites={"w": True})
    with pytest.raises(ValueError, match="'nope'.*not a continuous latent site"):
        partition_sites(model, hyper_sites={"nope": False})
    with pytest.raises(TypeError, match="'sigma' is a string"):
        partition_sites(model, hyper_sites="sigma")


# --- exact sampling --------------------------------------------------------------------


def sample(model, num_warmup, num_samples, seed):
    mcmc = MCMC(
        S3HMC(model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed))
    diverging = int(mcmc.get_extra_fields()["diverging"].sum())
    return mcmc.get_samples(group_by_chain=True), diverging


def check_family(s, name, site=None, min_ess=150):
    h = np.asarray(s[site or f"h_{name}"], np.float64)
    assert_mean(np.log(h), FAMILIES[name][2], f"{name}: E[log h]", min_ess=min_ess)
    assert_mean(h / (1 + h), bounded_mean(name), f"{name}: E[h/(1+h)]", min_ess=min_ess)


@pytest.mark.slow  # about 30 s; the partition and Fisher c of every family are checked above
def test_every_family_exact():
    """All families in one model (one compilation): 8 independent 20-D funnels."""
    s, diverging = sample(all_funnels, 500, 1500, seed=0)
    for name in FAMILIES:
        check_family(s, name)
    check_family(s, "halfnormal", site="h_student")  # same prior, Student-t children
    assert diverging <= 0.001 * 4 * 1500


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_funnel_50d_long(name):
    s, diverging = sample(lambda: funnel_block(name, 50), 1000, 5000, seed=1)
    check_family(s, name, min_ess=1000)
    assert diverging <= 0.001 * 4 * 5000


def test_kernel_passes_a_hyper_sites_mapping():
    def model():
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("w", dist.Normal(0.0, sigma).expand([3]))

    for hyper_sites, hyper in ((None, ("sigma",)), ({"sigma": False}, ())):
        kernel = S3HMC(model, hyper_sites=hyper_sites, coordinates="centred")
        MCMC(kernel, num_warmup=5, num_samples=5, progress_bar=False).run(jax.random.PRNGKey(0))
        assert kernel.partition.hyper == hyper


def test_family_benchmark_models_and_report(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "families.py"
    spec = importlib.util.spec_from_file_location("benchmarks_families", path)
    families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(families)
    for family, (prior, role) in families.FAMILIES.items():
        p = partition_sites(families.funnel(family, 50))
        assert p.hyper == ("h",) and p.hyper_sites["h"].role == role, family
        assert p.hyper_sites["h"].prior == type(prior()).__name__
    report = tmp_path / "results.md"
    report.write_text("# Benchmarks\n\nkept\n")
    families.write_results("first table", report)
    families.write_results("second table", report)
    text = report.read_text()
    assert "kept" in text and "second table" in text and "first table" not in text
    assert text.count("## Hyperprior families") == 1
