"""Every integrator against posteriors known in closed form, judged by MCSE z-scores.

The Monte Carlo standard error of a mean is sd / sqrt(ESS) with ArviZ's bulk ESS;
a correct sampler misses by more than Z_MAX standard errors with probability
< 1e-4 per check, and the seeds are fixed. A minimum ESS keeps the checks sharp.
"""

import exact_answers
import numpy as np
import pytest
from exact_answers import assert_mean
from scipy import special

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc.integrators import INTEGRATORS


def sample(model, integrator, *args, num_samples=1000, seed=0, **kernel_kwargs):
    # centred unless a test says otherwise: these check the integrators on the
    # semi-separable metric, which coordinates="auto" would bypass on a prior-only funnel
    kernel_kwargs.setdefault("coordinates", "centred")
    kernel = S3HMC(model, integrator=integrator, **kernel_kwargs)
    mcmc = MCMC(
        kernel,
        num_warmup=500,
        num_samples=num_samples,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), *args)
    draws = mcmc.get_samples(group_by_chain=True)
    fields = mcmc.get_extra_fields(group_by_chain=True)
    # In τ coordinates the implicit position update τ' = τ + h/2 (τ² + τ'²) r_τ / c has
    # a real root only while the log-step s = h r_η / (2c) stays below (√2 − 1)/2:
    # beyond it the step fails, is rejected and counted (docs/design.md §5.2). How often
    # depends on the trajectory length; the explicit integrators never fail here.
    max_divergences = 0.1 * fields["diverging"].size if integrator == "implicit_alba" else 0
    assert int(fields["diverging"].sum()) <= max_divergences
    return draws


# prior-only funnel: τ ~ Gamma(a, b), x | τ ~ N(0, 1/τ); α > 2 keeps Var(x²) finite
A, B, D = 3.0, 2.0, 10


def funnel():
    tau = numpyro.sample("tau", dist.Gamma(A, B))
    numpyro.sample("x", dist.Normal(0.0, 1.0 / jnp.sqrt(tau)).expand([D]))


@pytest.mark.parametrize(
    "integrator, trajectory",
    [(i, t) for i in INTEGRATORS for t in ("static", "nuts")] + [("splitting", "auto")],
)
def test_gamma_funnel(integrator, trajectory):
    s = sample(funnel, integrator, trajectory=trajectory)
    assert_mean(s["tau"], A / B, "E[tau]")
    assert_mean(np.log(s["tau"]), special.digamma(A) - np.log(B), "E[log tau]")
    assert_mean(s["x"][..., 0] ** 2, B / (A - 1), "E[x0^2]")
    assert_mean(np.mean(s["x"] ** 2, -1), B / (A - 1), "E[mean x^2]")


# conjugate Normal-Gamma: τ scales both the prior of μ (with κ0) and the likelihood
M0, K0, A0, B0 = 1.0, 0.5, 2.0, 2.0
Y = np.array([0.3, 1.9, 2.4, 0.8, 1.5, 3.1, 1.2, 2.2, 0.9, 1.7])


def normal_gamma(y):
    tau = numpyro.sample("tau", dist.Gamma(A0, B0))
    mu = numpyro.sample("mu", dist.Normal(M0, 1.0 / jnp.sqrt(K0 * tau)))
    numpyro.sample("y", dist.Normal(mu, 1.0 / jnp.sqrt(tau)), obs=y)


def normal_gamma_posterior():
    return exact_answers.normal_gamma_posterior(Y, A0, B0, M0, K0)


@pytest.mark.parametrize(
    "integrator, trajectory",
    [(i, "static") for i in INTEGRATORS] + [("splitting", "nuts"), ("splitting", "auto")],
)
def test_normal_gamma(integrator, trajectory):
    mn, kn, an, bn = normal_gamma_posterior()
    s = sample(normal_gamma, integrator, jnp.asarray(Y), trajectory=trajectory)
    assert_mean(s["tau"], an / bn, "E[tau]")
    assert_mean(np.log(s["tau"]), special.digamma(an) - np.log(bn), "E[log tau]")
    assert_mean(s["mu"], mn, "E[mu]")
    assert_mean((s["mu"] - mn) ** 2, bn / (kn * (an - 1)), "Var[mu]")


# a Gaussian posterior, no hyperparameters: x ~ N(0, 2), y ~ N(x, σ)
SIGMA = np.array([0.5, 1.0, 2.0])
YG = np.array([1.0, -0.5, 2.0])


def gaussian(y):
    x = numpyro.sample("x", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
    numpyro.sample("y", dist.Normal(x, SIGMA).to_event(1), obs=y)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_gaussian(integrator):
    precision = 1 / 4 + 1 / SIGMA**2
    mean = (YG / SIGMA**2) / precision
    s = sample(gaussian, integrator, jnp.asarray(YG))
    for i in range(3):
        assert_mean(s["x"][..., i], mean[i], f"E[x{i}]")
        assert_mean((s["x"][..., i] - mean[i]) ** 2, 1 / precision[i], f"Var[x{i}]")


@pytest.mark.slow
@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_gamma_funnel_50d_long(integrator):
    def funnel50():
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, 1.0 / jnp.sqrt(tau)).expand([50]))

    s = sample(funnel50, integrator, num_samples=5000, seed=1)
    assert_mean(s["tau"], 2.0, "E[tau]", min_ess=1000)
    assert_mean(np.log(s["tau"]), special.digamma(2.0), "E[log tau]", min_ess=1000)
    assert_mean((s["tau"] - 2.0) ** 2, 2.0, "Var[tau]", min_ess=1000)


# the default run checks one of the non-default θ metrics; the others with -m slow
@pytest.mark.parametrize(
    "param_metric",
    [
        "prior+fisher",
        *(pytest.param(m, marks=pytest.mark.slow) for m in ("prior+variance", "prior")),
    ],
)
def test_normal_gamma_other_param_metrics(param_metric):
    mn, kn, an, bn = normal_gamma_posterior()
    s = sample(normal_gamma, "splitting", jnp.asarray(Y), param_metric=param_metric)
    assert_mean(s["tau"], an / bn, "E[tau]")
    assert_mean(s["mu"], mn, "E[mu]")
    assert_mean((s["mu"] - mn) ** 2, bn / (kn * (an - 1)), "Var[mu]")
