"""S3HMC inside numpyro.infer.MCMC: execution modes, resume, fields, faults."""

import pickle

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, init_to_median

from numpyro_s3hmc import S3HMC

X = jax.random.normal(jax.random.PRNGKey(1), (30, 3))
Y = X @ jnp.array([1.0, -1.0, 0.5]) + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (30,))


def regression(X, y=None):
    tau_w = numpyro.sample("tau_w", dist.Gamma(2.0, 1.0))
    w = numpyro.sample("w", dist.Normal(0, 1 / jnp.sqrt(tau_w)).expand([X.shape[1]]))
    tau_y = numpyro.sample("tau_y", dist.Gamma(2.0, 1.0))
    numpyro.sample("y", dist.Normal(X @ w, 1 / jnp.sqrt(tau_y)), obs=y)


def run(kernel=None, *, num_chains=1, chain_method="sequential", seed=0, **mcmc_kwargs):
    mcmc = MCMC(
        kernel or S3HMC(regression),
        num_warmup=mcmc_kwargs.pop("num_warmup", 100),
        num_samples=mcmc_kwargs.pop("num_samples", 100),
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
        **mcmc_kwargs,
    )
    mcmc.run(jax.random.PRNGKey(seed), X, Y)
    return mcmc


@pytest.mark.parametrize("chain_method", ["sequential", "vectorized", "parallel"])
def test_chain_methods_agree_in_law(chain_method):
    mcmc = run(num_chains=2, chain_method=chain_method, num_warmup=300, num_samples=300)
    w = mcmc.get_samples(group_by_chain=True)["w"]
    assert w.shape == (2, 300, 3)
    # least squares is the posterior mean up to shrinkage well below 0.1 here
    ls = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(w).mean((0, 1)), ls, atol=0.1)
    assert int(mcmc.get_extra_fields()["diverging"].sum()) == 0


def test_same_key_same_draws():
    a = run().get_samples()["w"]
    b = run().get_samples()["w"]
    c = run(seed=1).get_samples()["w"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_default_fields_for_arviz():
    fields = run().get_extra_fields()
    for name in (
        "diverging",
        "potential_energy",
        "energy",
        "accept_prob",
        "num_grad_evals",
        "adapt_state.step_size",
    ):
        assert fields[name].shape == (100,), name
    assert "num_steps" not in fields  # ArviZ would call it tree_depth
    # splitting: one gradient per integrator step
    assert int(fields["num_grad_evals"].min()) >= 1


def test_grad_count_per_integrator():
    for integrator, per_step in (("splitting", 1), ("alba", 3), ("implicit_alba", 3)):
        mcmc = MCMC(
            S3HMC(regression, integrator=integrator),
            num_warmup=20,
            num_samples=20,
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(0), X, Y, extra_fields=("num_integrator_steps",))
        f = mcmc.get_extra_fields()
        steps = np.asarray(f["num_integrator_steps"])
        np.testing.assert_array_equal(np.asarray(f["num_grad_evals"]), per_step * steps)


def test_resume_and_warmup_then_run():
    mcmc = run()
    first = mcmc.get_samples()["w"]
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(mcmc.post_warmup_state.rng_key, X, Y)
    second = mcmc.get_samples()["w"]
    assert not np.array_equal(first, second)
    assert int(mcmc.last_state.i) == 300  # 100 warmup + 100 + 100

    mcmc = MCMC(S3HMC(regression), num_warmup=100, num_samples=50, progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(0), X, Y)
    step_size = float(mcmc.post_warmup_state.adapt_state.step_size)
    mcmc.run(jax.random.PRNGKey(1), X, Y)
    mcmc.run(jax.random.PRNGKey(2), X, Y)
    # no adaptation after warmup
    assert float(mcmc.last_state.adapt_state.step_size) == step_size
    assert mcmc.get_samples()["w"].shape == (50, 3)


def test_pickle_and_continue():
    mcmc = run()
    restored = pickle.loads(pickle.dumps(mcmc))
    restored.post_warmup_state = restored.last_state
    restored.run(restored.post_warmup_state.rng_key, X, Y)
    assert restored.get_samples()["w"].shape == (100, 3)


def test_jit_model_args_new_data_same_shape():
    mcmc = run(jit_model_args=True)
    mcmc.run(jax.random.PRNGKey(3), X, -Y)
    w = mcmc.get_samples()["w"]
    assert float(jnp.mean(w[:, 0])) < 0  # really sampled the new data


def test_init_params_and_init_strategy():
    init = {"w": jnp.zeros(3), "tau_w": jnp.array(0.0), "tau_y": jnp.array(1.0)}
    mcmc = MCMC(S3HMC(regression), num_warmup=0, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), X, Y, init_params=init)
    assert mcmc.get_samples()["w"].shape == (1, 3)
    mcmc = run(S3HMC(regression, init_strategy=init_to_median))
    assert mcmc.get_samples()["tau_y"].shape == (100,)


def test_model_property_and_partition():
    kernel = S3HMC(regression)
    assert kernel.model is regression and kernel.partition is None
    run(kernel)
    assert kernel.partition.hyper == ("tau_w", "tau_y")


def test_float64():
    with jax.enable_x64(True):
        mcmc = MCMC(S3HMC(regression), num_warmup=100, num_samples=100, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), X.astype(jnp.float64), Y.astype(jnp.float64))
        s = mcmc.get_samples()
        state = mcmc.last_state
        assert s["w"].dtype == jnp.float64 and s["tau_y"].dtype == jnp.float64
        assert state.potential_energy.dtype == jnp.float64
        assert state.metric_state.data_precision.dtype == jnp.float64
        assert state.energy.dtype == jnp.float64


def test_no_hyperparameters_runs():
    def model():
        numpyro.sample("x", dist.Normal(jnp.array([2.0, -2.0]), 1.0).to_event(1))

    mcmc = MCMC(S3HMC(model), num_warmup=200, num_samples=400, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    np.testing.assert_allclose(mcmc.get_samples()["x"].mean(0), [2.0, -2.0], atol=0.3)


def test_bad_input_errors():
    def discrete():
        numpyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="'k'"):
        MCMC(S3HMC(discrete), num_warmup=1, num_samples=1).run(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Observed site 'y'"):
        run(S3HMC(regression)).run(jax.random.PRNGKey(0), X, Y.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="integrator must be one of"):
        S3HMC(regression, integrator="rk4")


def nan_region(y=jnp.array([0.5, 1.0, 1.5])):
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1 / jnp.sqrt(tau)))
    # the likelihood is NaN for mu > 2.5: a hole in the support the sampler must survive
    loc = jnp.where(mu > 2.5, jnp.nan, mu)
    numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def test_nan_likelihood_is_a_counted_divergence():
    mcmc = MCMC(
        S3HMC(nan_region, step_size=50.0, adapt_step_size=False),
        num_warmup=0,
        num_samples=50,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0))
    f = mcmc.get_extra_fields()
    assert int(f["diverging"].sum()) > 0
    assert np.all(np.isfinite(mcmc.get_samples()["mu"]))
    assert np.all(np.asarray(f["accept_prob"])[np.asarray(f["diverging"])] < 1e-6)


def test_huge_initial_step_size_recovers():
    mcmc = MCMC(
        S3HMC(regression, step_size=1e4),
        num_warmup=300,
        num_samples=100,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), X, Y)
    f = mcmc.get_extra_fields()
    assert float(f["adapt_state.step_size"][-1]) < 10.0
    assert int(f["diverging"].sum()) <= 2


def test_fixed_point_failure_is_a_divergence():
    kernel = S3HMC(
        regression,
        integrator="implicit_alba",
        step_size=0.5,
        adapt_step_size=False,  # the initial step-size search would shrink it to converge
        integrator_kwargs={"fixed_point_max_iter": 1},
    )
    mcmc = run(kernel, num_warmup=0, num_samples=20)
    f = mcmc.get_extra_fields()
    assert bool(f["diverging"].all())
    np.testing.assert_array_equal(mcmc.get_samples()["w"][0], mcmc.get_samples()["w"][-1])


def test_adapted_trajectory_length_on_funnel():
    def funnel():
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([50]))

    mcmc = MCMC(S3HMC(funnel), num_warmup=500, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    state = mcmc.last_state
    # π sqrt(Var[log τ] c) with Var[log τ] = ψ'(2) ≈ 0.645 and c = 26: ≈ 12.9
    assert 9.0 < float(state.metric_state.trajectory_length) < 17.0
    # prior-only: no data precision survives its noise on most coordinates
    assert float(jnp.median(state.metric_state.data_precision)) < 0.1
    fixed = S3HMC(funnel, trajectory_length=3.0)
    mcmc = MCMC(fixed, num_warmup=300, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    assert float(mcmc.last_state.metric_state.trajectory_length) == 3.0
