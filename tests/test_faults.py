"""Faults S3HMC must survive: what the user sees, and draws that stay exact.

Each test states what a user gets from the fault (a warning, a divergence count
or a clear error) and, where the posterior is proper, checks the draws against
the exact answer by MCSE z-scores (as tests/test_exact.py does).
"""

import arviz as az
import exact_answers
import numpy as np
import pytest
from scipy import integrate, special, stats

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC

Z_MAX = 4.0
Y = np.array([0.3, 1.9, 2.4, 0.8, 1.5, 3.1, 1.2, 2.2, 0.9, 1.7])


def assert_mean(draws, truth, name, min_ess=150):
    draws = np.asarray(draws, dtype=np.float64).reshape(1, -1)
    ess = float(az.ess(draws))
    mcse = draws.std(ddof=1) / np.sqrt(ess)
    z = abs(draws.mean() - truth) / mcse
    assert ess > min_ess, f"{name}: ESS {ess:.0f} too small to test"
    assert z < Z_MAX, f"{name}: mean {draws.mean():.4g}, truth {truth:.4g}, z = {z:.2f}"


def sample(kernel, *args, num_warmup=300, num_samples=1500, seed=0):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("fixed_point_iters",))
    return mcmc.get_samples(), mcmc.get_extra_fields()


def normal_gamma_model(a0, b0, m0=1.0, k0=0.5, cut=None, bad=np.nan):
    """τ ~ Gamma(a0, b0), μ ~ N(m0, 1/√(k0 τ)), y ~ N(μ, 1/√τ); ``bad`` where μ > cut."""

    def model(y):
        tau = numpyro.sample("tau", dist.Gamma(a0, b0))
        mu = numpyro.sample("mu", dist.Normal(m0, 1.0 / jnp.sqrt(k0 * tau)))
        loc = mu if cut is None else jnp.where(mu > cut, bad, mu)
        numpyro.sample("y", dist.Normal(loc, 1.0 / jnp.sqrt(tau)), obs=y)

    return model


def normal_gamma_posterior(y, a0, b0):
    return exact_answers.normal_gamma_posterior(y, a0, b0, m0=1.0, k0=0.5)


def check_normal_gamma(s, y, a0, b0):
    mn, kn, an, bn = normal_gamma_posterior(y, a0, b0)
    assert_mean(np.log(s["tau"]), special.digamma(an) - np.log(bn), "E[log tau]")
    assert_mean(s["mu"], mn, "E[mu]")
    assert_mean((s["mu"] - mn) ** 2, bn / (kn * (an - 1)), "Var[mu]")


# --- a likelihood that is NaN or inf in part of the space ---------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_likelihood_region(bad):
    # the likelihood is NaN (or its log-density -inf) for μ beyond a cut two posterior
    # standard deviations out: the region has zero density, the target is the
    # posterior truncated to μ ≤ cut, and every trajectory that enters the region is
    # a divergence. (A cut inside the bulk is survived too, but HMC against a hard
    # wall shrinks its step size and mixes too slowly for a quick test.)
    mn, kn, an, bn = normal_gamma_posterior(Y, 2.0, 2.0)
    t = stats.t(df=2 * an, loc=mn, scale=np.sqrt(bn / (an * kn)))
    cut = mn + 2.0 * t.std()
    mass = t.cdf(cut)
    e_mu = integrate.quad(lambda m: m * t.pdf(m), -np.inf, cut)[0] / mass
    # τ | μ ~ Gamma(an + ½, bn + kn (μ − mn)²/2)
    e_tau = (
        integrate.quad(
            lambda m: t.pdf(m) * (an + 0.5) / (bn + kn * (m - mn) ** 2 / 2), -np.inf, cut
        )[0]
        / mass
    )
    model = normal_gamma_model(2.0, 2.0, cut=cut, bad=bad)
    s, f = sample(S3HMC(model), jnp.asarray(Y))
    assert int(f["diverging"].sum()) > 0  # what the user sees: a divergence count
    assert np.all(np.isfinite(s["mu"])) and np.all(s["mu"] <= cut)
    diverging = np.asarray(f["diverging"])
    assert np.all(np.asarray(f["accept_prob"])[diverging] == 0.0)
    assert_mean(s["mu"], e_mu, "E[mu | mu <= cut]")
    assert_mean(s["tau"], e_tau, "E[tau | mu <= cut]")


# --- extreme hyperpriors ------------------------------------------------------


@pytest.mark.parametrize(
    "a0, b0, count_observations",
    [(0.01, 1.0, False), (1000.0, 1000.0, True), (2.0, 1e-4, True)],
    ids=["tiny-alpha", "huge-alpha", "tiny-beta"],
)
def test_extreme_hyperpriors(a0, b0, count_observations):
    model = normal_gamma_model(a0, b0)
    kernel = S3HMC(model, count_observations=count_observations)
    if a0 < 0.5:
        # Q = 1 (μ alone, observations not counted): c = Q/2 + α − 1 < 0, and the
        # user is told which fallback the metric takes
        with pytest.warns(UserWarning, match=r"falls back to Q/2 \+ alpha"):
            s, f = sample(kernel, jnp.asarray(Y))
        assert float(kernel.partition.hyper_sites["tau"].c) == pytest.approx(0.5 + a0)
    else:
        s, f = sample(kernel, jnp.asarray(Y))
    assert int(f["diverging"].sum()) == 0
    check_normal_gamma(s, Y, a0, b0)


# --- data with large magnitudes -----------------------------------------------


def test_large_magnitude_data():
    # y around 1e4 with spread 1e4: τ ≈ 3e-7, far from the init (|log τ| ≤ 2)
    y = 1e4 * Y + 1e4
    s, f = sample(S3HMC(normal_gamma_model(2.0, 2.0)), jnp.asarray(y, jnp.float32))
    assert int(f["diverging"].sum()) == 0
    check_normal_gamma(s, y, 2.0, 2.0)


# --- exp overflow of a log-precision, and a step size far too large ------------

X_OBS = np.array([0.4, -1.1, 0.7, 1.6, -0.2, -0.9])
LOG_TAU_SD = 30.0


def user_log_precision(x):
    # a log-precision sampled by the user and exponentiated: exp overflows for
    # log_tau > 88 in float32, which the vague prior does not rule out
    log_tau = numpyro.sample("log_tau", dist.Normal(0.0, LOG_TAU_SD))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(-0.5 * log_tau)), obs=x)


def log_tau_posterior_mean():
    grid = np.linspace(-15.0, 15.0, 20001)
    log_lik = stats.norm.logpdf(X_OBS, 0, np.exp(-0.5 * grid[:, None])).sum(-1)
    log_post = stats.norm.logpdf(grid, 0, LOG_TAU_SD) + log_lik
    w = np.exp(log_post - log_post.max())
    return float((grid * w).sum() / w.sum())


@pytest.mark.parametrize("model", ["gamma-site", "user-log-precision"])
def test_exp_overflow_is_a_divergence(model):
    # a fixed step of 50 in log τ: exp(η) or exp(-log_tau/2) overflows to inf
    # within a trajectory; each such transition is a divergence, rejected, and the
    # chain stays on finite values
    if model == "gamma-site":
        fn, args = normal_gamma_model(2.0, 2.0), (jnp.asarray(Y),)
    else:
        fn, args = user_log_precision, (jnp.asarray(X_OBS),)
    kernel = S3HMC(fn, step_size=50.0, adapt_step_size=False, adapt_metric=False, num_steps=4)
    s, f = sample(kernel, *args, num_warmup=0, num_samples=30)
    diverging = np.asarray(f["diverging"])
    assert diverging.sum() >= 25
    for v in s.values():
        assert np.all(np.isfinite(np.asarray(v)))
    assert np.all(np.asarray(f["accept_prob"])[diverging] == 0.0)
    assert np.all(np.isfinite(np.asarray(f["potential_energy"])))


def test_huge_initial_step_size_and_overflow_recovers():
    # start with a step size 1e3 times too large on the vague log-precision model:
    # the first trajectories overflow and are counted as warmup divergences; the
    # step-size search and dual averaging bring it back, and the draws match the
    # posterior (1-D quadrature)
    mcmc = MCMC(
        S3HMC(user_log_precision, step_size=1e3),
        num_warmup=300,
        num_samples=1500,
        progress_bar=False,
    )
    mcmc.warmup(jax.random.PRNGKey(0), jnp.asarray(X_OBS), collect_warmup=True)
    assert int(mcmc.get_extra_fields()["diverging"].sum()) > 0
    mcmc.run(jax.random.PRNGKey(1), jnp.asarray(X_OBS))
    f = mcmc.get_extra_fields()
    assert float(f["adapt_state.step_size"][-1]) < 5.0
    assert int(f["diverging"].sum()) == 0
    assert_mean(mcmc.get_samples()["log_tau"], log_tau_posterior_mean(), "E[log_tau]")


@pytest.mark.parametrize("integrator", ["splitting", "implicit_alba"])
def test_huge_initial_step_size_normal_gamma(integrator):
    s, f = sample(S3HMC(normal_gamma_model(2.0, 2.0), integrator=integrator, step_size=1e4), Y)
    assert float(f["adapt_state.step_size"][-1]) < 5.0
    max_divergences = 0.1 * f["diverging"].size if integrator == "implicit_alba" else 0
    assert int(f["diverging"].sum()) <= max_divergences
    check_normal_gamma(s, Y, 2.0, 2.0)


# --- a fixed point that never converges (implicit integrator) -----------------


def test_fixed_point_never_converges():
    kernel = S3HMC(
        normal_gamma_model(2.0, 2.0),
        integrator="implicit_alba",
        step_size=0.5,
        adapt_step_size=False,  # the step-size search would shrink it until it converges
        integrator_kwargs={"fixed_point_max_iter": 1},
    )
    s, f = sample(kernel, jnp.asarray(Y), num_warmup=0, num_samples=20)
    # the user sees every transition diverge, and the solver at its cap
    assert bool(np.all(f["diverging"]))
    np.testing.assert_array_equal(np.asarray(f["fixed_point_iters"]), 1)
    np.testing.assert_array_equal(s["mu"], s["mu"][0])  # every proposal rejected
    assert np.all(np.isfinite(s["mu"]))
