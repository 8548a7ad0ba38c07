"""What the partition's errors advise works: discrete sites in NumPyro's Gibbs beside
S3HMC, and missing observations through ``obs_mask=``; both exact (MCSE z-scores)."""

import exact_answers
import numpy as np
import pytest
from exact_answers import assert_mean

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, DiscreteGibbs, Gibbs
from numpyro.infer.gibbs import discrete_latent_sites

from numpyro_s3hmc import S3HMC, partition_sites

MU = jnp.array([0.0, 1.0])


def mixture_prior():
    """Prior only, so every moment is known: P(z = 1) = 0.3, E[tau] = 2,
    E[x_i] = 0.3, E[x_i²] = E[1/tau] + E[MU[z]²] = 1 + 0.3."""
    z = numpyro.sample("z", dist.Bernoulli(0.3))
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("x", dist.Normal(MU[z], 1 / jnp.sqrt(tau)).expand([3]).to_event(1))


def test_discrete_site_error_names_the_gibbs_recipe():
    with pytest.raises(ValueError, match=r"'z'.*Gibbs\(\[\(DiscreteGibbs\(model\)"):
        MCMC(S3HMC(mixture_prior), num_warmup=1, num_samples=1, progress_bar=False).run(
            jax.random.PRNGKey(0)
        )


def test_an_enumerated_discrete_site_is_told_to_drop_the_annotation():
    # NUTS's enumeration idiom: discrete_latent_sites skips such a site, so the Gibbs
    # recipe only works once the annotation is gone, and the error says so
    def enumerated():
        numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"'z'.*remove its infer=\{'enumerate'"):
        MCMC(S3HMC(enumerated), num_warmup=1, num_samples=1, progress_bar=False).run(
            jax.random.PRNGKey(0)
        )


def test_s3hmc_as_a_gibbs_block_is_exact():
    kernel = Gibbs(
        [(DiscreteGibbs(mixture_prior), discrete_latent_sites), (S3HMC(mixture_prior), None)]
    )
    mcmc = MCMC(kernel, num_warmup=500, num_samples=2000, num_chains=2, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    s = mcmc.get_samples(group_by_chain=True)
    assert_mean(s["z"], 0.3, "P(z = 1)")
    assert_mean(s["tau"], 2.0, "E[tau]")
    assert_mean(s["x"][..., 0], 0.3, "E[x0]")
    assert_mean(s["x"][..., 0] ** 2, 1.3, "E[x0^2]")


Y = np.array([0.3, 1.9, np.nan, 0.8, 1.5, np.nan, 1.2, 2.2, 0.9, 1.7])
A0, B0, M0, K0 = 2.0, 1.0, 0.0, 0.5


def normal_gamma_with_missing(y):
    tau = numpyro.sample("tau", dist.Gamma(A0, B0))
    mu = numpyro.sample("mu", dist.Normal(M0, 1 / jnp.sqrt(K0 * tau)))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1 / jnp.sqrt(tau)), obs=y, obs_mask=np.isfinite(y))


def test_missing_values_are_an_error_without_obs_mask():
    def model(y):
        tau = numpyro.sample("tau", dist.Gamma(A0, B0))
        numpyro.sample("y", dist.Normal(0.0, 1 / jnp.sqrt(tau)), obs=y)

    with pytest.raises(ValueError, match="Observed site 'y' has 2 non-finite.*obs_mask="):
        MCMC(S3HMC(model), num_warmup=1, num_samples=1, progress_bar=False).run(
            jax.random.PRNGKey(0), Y
        )


def test_obs_mask_samples_the_missing_entries_exactly():
    """The posterior of (tau, mu) is the Normal-Gamma of the observed entries, and
    each missing entry is a posterior-predictive draw: E[y_missing] = E[mu]."""
    mn, kn, an, bn = exact_answers.normal_gamma_posterior(Y[np.isfinite(Y)], A0, B0, M0, K0)
    mcmc = MCMC(
        S3HMC(normal_gamma_with_missing),
        num_warmup=500,
        num_samples=2000,
        num_chains=2,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(1), Y, extra_fields=("diverging",))
    s = mcmc.get_samples(group_by_chain=True)
    assert int(mcmc.get_extra_fields()["diverging"].sum()) == 0
    assert_mean(s["tau"], an / bn, "E[tau]")
    assert_mean(s["mu"], mn, "E[mu]")
    assert_mean((s["mu"] - mn) ** 2, bn / (kn * (an - 1)), "Var[mu]")
    for i in np.flatnonzero(~np.isfinite(Y)):
        assert_mean(s["y"][..., i], mn, f"E[y[{i}]]")
    observed = np.isfinite(Y)
    np.testing.assert_array_equal(
        np.asarray(s["y"])[..., observed],
        np.broadcast_to(Y[observed], s["y"].shape[:2] + (observed.sum(),)).astype(np.float32),
    )


def simplex_and_correlation():
    """A Gamma precision with children beside latent sites with fewer unconstrained
    elements than values: E[tau] = 2 (prior only), p | counts ~ Dirichlet(6, 4, 3),
    and LKJ(η = 2) in 3-D gives each correlation r = 2B − 1, B ~ Beta(2.5, 2.5), so
    E[r²] = 1/6."""
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([3]).to_event(1))
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    numpyro.sample("counts", dist.Multinomial(10, p), obs=jnp.array([5.0, 3.0, 2.0]))
    numpyro.sample("L", dist.LKJCholesky(3, 2.0))


def test_simplex_and_correlation_sites_are_exact():
    # a Dirichlet's or an LKJ factor's unconstrained value is smaller than its value:
    # the partition's rows follow the unconstrained one (this crashed at init before)
    part = partition_sites(simplex_and_correlation)
    assert part.hyper == ("tau",) and {"p", "L", "x"} <= set(part.params)
    assert part.param_sites["x"].governed_by == ("tau",)
    mcmc = MCMC(
        S3HMC(simplex_and_correlation),
        num_warmup=500,
        num_samples=1500,
        num_chains=2,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0))
    s = mcmc.get_samples(group_by_chain=True)
    assert_mean(s["tau"], 2.0, "E[tau]")
    assert_mean(s["p"][..., 0], 6 / 13, "E[p0]")
    assert_mean(s["L"][..., 1, 0] ** 2, 1 / 6, "E[r10^2]")
