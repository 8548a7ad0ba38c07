"""The automatic partition, table-driven over the ways models write precisions."""

import numpy as np
import pytest

import jax.numpy as jnp
from flax import linen as nn

import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_flax_module

from numpyro_s3hmc import partition_sites


def scalar():
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("w", dist.Normal(0.0, 1 / jnp.sqrt(tau)))


def vector():
    tau = numpyro.sample("tau", dist.Gamma(3.0, 1.0))
    numpyro.sample("w", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([7]))


def to_event():
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("w", dist.Normal(jnp.zeros((2, 3)), 1 / jnp.sqrt(tau)).to_event(2))


def plate_per_group():
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))
    with numpyro.plate("members", 4, dim=-2):
        with numpyro.plate("groups", 3, dim=-1):
            numpyro.sample("w", dist.Normal(0.0, 1 / jnp.sqrt(tau)))


def kappa_tau(y=jnp.array([0.1, 0.5, -0.3])):
    kappa = numpyro.sample("kappa", dist.Gamma(2.0, 2.0))
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1 / jnp.sqrt(kappa * tau)))
    numpyro.sample("y", dist.Normal(mu, 1 / jnp.sqrt(tau)), obs=y)


def sigma_scale():  # scale = sigma, a HalfNormal hyperparameter (test_scale_hyperprior)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("w", dist.Normal(0.0, sigma).expand([2]))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(5)(x))
        return nn.Dense(1)(x)


def flax_bnn(x=jnp.linspace(-1, 1, 8)[:, None], y=jnp.zeros(8)):
    tau_w = numpyro.sample("tau_w", dist.Gamma(2.0, 1.0))
    tau_b = numpyro.sample("tau_b", dist.Gamma(2.0, 1.0))
    prior = {
        "Dense_0.kernel": dist.Normal(0.0, 1 / jnp.sqrt(tau_w)),
        "Dense_1.kernel": dist.Normal(0.0, 1 / jnp.sqrt(tau_w)),
        "Dense_0.bias": dist.Normal(0.0, 1 / jnp.sqrt(tau_b)),
        "Dense_1.bias": dist.Normal(0.0, 1 / jnp.sqrt(tau_b)),
    }
    net = random_flax_module("net", MLP(), prior, input_shape=(1, 1))
    tau_y = numpyro.sample("tau_y", dist.Gamma(2.0, 1.0))
    numpyro.sample("y", dist.Normal(net(x).squeeze(-1), 1 / jnp.sqrt(tau_y)), obs=y)


CASES = [
    # model, hyper sites with their Q, params with governed fraction
    (scalar, {"tau": 1}, {"w": 1.0}),
    (vector, {"tau": 7}, {"w": 1.0}),
    (to_event, {"tau": 6}, {"w": 1.0}),
    (plate_per_group, {"tau": [4, 4, 4]}, {"w": 1.0}),
    (kappa_tau, {"kappa": 1, "tau": 4}, {"mu": 1.0}),
    (
        flax_bnn,
        {"tau_w": 10, "tau_b": 6, "tau_y": 8},
        {
            "net/Dense_0.kernel": 1.0,
            "net/Dense_0.bias": 1.0,
            "net/Dense_1.kernel": 1.0,
            "net/Dense_1.bias": 1.0,
        },
    ),
]


@pytest.mark.parametrize("model, hyper, params", CASES, ids=[c[0].__name__ for c in CASES])
def test_partition(model, hyper, params):
    p = partition_sites(model)
    assert set(p.hyper) == set(hyper)
    assert set(p.params) == set(params)
    for k, q in hyper.items():
        np.testing.assert_array_equal(p.hyper_sites[k].q, q)
        alpha = p.hyper_sites[k].alpha
        np.testing.assert_allclose(p.hyper_sites[k].c, np.asarray(q) / 2 + alpha - 1)
    for k, frac in params.items():
        assert p.param_sites[k].governed.mean() == frac
    assert p.hyper_precision.size == sum(np.size(v) for v in hyper.values())
    text = str(p)
    for k in list(hyper) + list(params):
        assert k in text


def test_governing_links():
    p = partition_sites(kappa_tau)
    assert p.param_sites["mu"].governed_by == ("kappa", "tau")
    assert p.hyper_sites["tau"].governs == ("mu", "y")
    assert p.hyper_sites["kappa"].governs == ("mu",)


def test_observations_not_counted_paper_choice():
    p = partition_sites(kappa_tau, count_observations=False)
    assert int(p.hyper_sites["tau"].q) == 1


def test_hyper_sites_override():
    p = partition_sites(kappa_tau, hyper_sites=("tau",))
    assert p.hyper == ("tau",)
    assert set(p.params) == {"kappa", "mu"}
    # mu's scale now depends on the parameter kappa: its metric is the adapted constant
    assert not p.param_sites["mu"].governed.any()


def test_no_hyperparameters():
    p = partition_sites(sigma_scale, hyper_sites=())
    assert p.hyper == () and p.hyper_precision.shape == (0,)


def test_hyper_site_must_be_positive_latent():
    with pytest.raises(ValueError, match="'w'.*positive"):
        partition_sites(vector, hyper_sites=("w",))
    with pytest.raises(ValueError, match="'nope'.*not a continuous latent site"):
        partition_sites(vector, hyper_sites=("nope",))


def test_discrete_latent_site_is_an_error():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))
        numpyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="Latent site 'k' has a discrete distribution"):
        partition_sites(model)


def test_non_finite_observation_is_an_error():
    y = jnp.array([0.1, jnp.nan, 0.3])
    with pytest.raises(ValueError, match="Observed site 'y' has 1 non-finite"):
        partition_sites(kappa_tau, (y,))


def test_fallback_metric_warns():
    def model(y=jnp.ones(3)):
        tau_y = numpyro.sample("tau_y", dist.Gamma(0.5, 1.0))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1 / jnp.sqrt(tau_y)), obs=y)

    with pytest.warns(UserWarning, match="falls back to Q/2 \\+ alpha"):
        p = partition_sites(model, count_observations=False)
    # Q = 0, α = 0.5: Q/2 + α − 1 < 0, fallback Q/2 + α
    assert float(p.hyper_sites["tau_y"].c) == 0.5
    assert p.hyper_sites["tau_y"].fallback.all()


def test_a_model_that_needs_its_arguments_concrete():
    # the partition's compiled derivatives take the data as arguments; a model that
    # reads an argument's value (int(...)) is evaluated directly instead, with the
    # same result (a location parent mu, a precision tau)
    group = np.array([0, 1, 1, 2, 2, 2])

    def model(group, y=None):
        num_groups = int(group.max()) + 1
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        with numpyro.plate("g", num_groups):
            theta = numpyro.sample("theta", dist.Normal(mu, 1 / jnp.sqrt(tau)))
        numpyro.sample("y", dist.Normal(theta[group], 1.0), obs=y)

    p = partition_sites(model, (group,), {"y": np.linspace(-1.0, 1.0, 6)})
    assert p.hyper == ("tau",) and p.params == ("mu", "theta")
    assert int(p.hyper_sites["tau"].q) == 3
    assert p.coupling is not None  # mu found as theta's location parent
