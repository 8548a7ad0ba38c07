"""Tests of numpyro_s3hmc.bnn: model structure, prior-key check, MAP start, summaries."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import linen as nn

import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_flax_module
from numpyro.infer import MCMC
from numpyro.infer.util import initialize_model, potential_energy

from numpyro_s3hmc import S3HMC, partition_sites
from numpyro_s3hmc.bnn import (
    PatchConv,
    check_prior_keys,
    classification_summary,
    hierarchical_bnn,
    map_init,
    param_names,
    predict,
    regression_summary,
)


class MLP(nn.Module):
    hidden: int = 8
    out: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


X = jnp.linspace(-2.0, 2.0, 16)[:, None]
Y = jnp.sin(X[:, 0])


def test_param_names():
    assert param_names(MLP(), (1, 1)) == {
        "Dense_0.kernel": (1, 8),
        "Dense_0.bias": (8,),
        "Dense_1.kernel": (8, 1),
        "Dense_1.bias": (1,),
    }


@pytest.mark.parametrize(
    "likelihood, out, y",
    [
        ("regression", 1, Y),
        ("heteroscedastic", 2, Y),
        ("classification", 3, (Y > 0).astype(jnp.int32)),
    ],
)
def test_shapes_and_partition(likelihood, out, y):
    model = hierarchical_bnn(MLP(out=out), (1, 1), likelihood=likelihood)
    names = param_names(MLP(out=out), (1, 1))
    p = partition_sites(model, (X, y))
    expected = {f"tau_{k.replace('.', '_')}": int(np.prod(s)) for k, s in names.items()}
    if likelihood == "regression":
        expected["tau_y"] = X.shape[0]  # Q counts the observations
    assert set(p.hyper) == set(expected)
    for k, q in expected.items():
        np.testing.assert_array_equal(p.hyper_sites[k].q, q)
    assert set(p.params) == {f"net/{k}" for k in names}
    for k in names:
        assert p.param_sites[f"net/{k}"].governed.all()
    # predictive shapes from prior draws
    prior = numpyro.infer.Predictive(model, num_samples=5)(jax.random.PRNGKey(0), X)
    assert prior["y"].shape == (5, X.shape[0])
    pred = predict(model, prior, X)
    if likelihood == "classification":
        assert pred["probs"].shape == (5, X.shape[0], out)
        np.testing.assert_allclose(pred["probs"].sum(-1), 1.0, rtol=1e-5)
    else:
        assert pred["mean"].shape == pred["var"].shape == (5, X.shape[0])
        assert (pred["var"] > 0).all()


def test_fixed_output_precision():
    model = hierarchical_bnn(MLP(), (1, 1), output_precision=100.0)
    p = partition_sites(model, (X, Y))
    assert "tau_y" not in p.hyper
    prior = numpyro.infer.Predictive(model, num_samples=2)(jax.random.PRNGKey(0), X)
    pred = predict(model, prior, X)
    np.testing.assert_allclose(pred["var"], 0.01, rtol=1e-6)


def test_bad_likelihood():
    with pytest.raises(ValueError, match="likelihood"):
        hierarchical_bnn(MLP(), (1, 1), likelihood="poisson")


def test_check_prior_keys():
    good = {k: dist.Normal(0.0, 1.0) for k in param_names(MLP(), (1, 1))}
    check_prior_keys(MLP(), good, (1, 1), require_all=True)
    bad = dict(good)
    bad["dense_0.weight"] = bad.pop("Dense_0.kernel")
    with pytest.raises(ValueError, match=r"dense_0\.weight.*Valid keys.*Dense_0\.kernel"):
        check_prior_keys(MLP(), bad, (1, 1))
    partial = {"Dense_0.kernel": dist.Normal(0.0, 1.0)}
    check_prior_keys(MLP(), partial, (1, 1))
    with pytest.raises(ValueError, match="have no prior"):
        check_prior_keys(MLP(), partial, (1, 1), require_all=True)


def test_regression_summary_matches_direct():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(200, 7))
    variances = rng.gamma(2.0, size=(200, 7))
    s = regression_summary(means, variances)
    np.testing.assert_allclose(s["mean"], means.mean(0))
    np.testing.assert_allclose(s["aleatoric"], variances.mean(0))
    np.testing.assert_allclose(s["epistemic"], ((means - means.mean(0)) ** 2).mean(0))
    np.testing.assert_allclose(s["total"], s["aleatoric"] + s["epistemic"])
    # total = variance of the equally weighted Gaussian mixture: E[y^2] - E[y]^2
    second = (variances + means**2).mean(0)
    np.testing.assert_allclose(s["total"], second - means.mean(0) ** 2, rtol=1e-10)
    # a scalar variance per draw broadcasts
    s1 = regression_summary(means, variances[:, :1])
    np.testing.assert_allclose(s1["aleatoric"], np.full(7, variances[:, 0].mean()))


def test_classification_summary_matches_direct():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(100, 6))
    probs[0, 0] = [1.0, 0.0, 0.0, 0.0]  # a zero probability must not give NaN
    s = classification_summary(probs)
    mean = probs.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(mean * np.log(mean), -1)
        eh = (-np.nansum(probs * np.log(probs), -1)).mean(0)
    np.testing.assert_allclose(s["probs"], mean)
    np.testing.assert_allclose(s["entropy"], h)
    np.testing.assert_allclose(s["expected_entropy"], eh)
    np.testing.assert_allclose(s["mutual_information"], h - eh)
    assert (s["mutual_information"] >= -1e-12).all()
    assert np.isfinite(s["entropy"]).all()


@pytest.fixture(scope="module")
def tiny():
    model = hierarchical_bnn(MLP(hidden=4), (1, 1))
    z_map = map_init(model, X, Y, num_steps=300, rng_key=jax.random.PRNGKey(0))
    return model, z_map


def test_map_init_beats_random_start(tiny):
    model, z_map = tiny
    info, *_ = initialize_model(jax.random.PRNGKey(1), model, model_args=(X, Y))
    assert set(z_map) == set(info.z)
    for k, v in info.z.items():
        assert jnp.shape(z_map[k]) == jnp.shape(v)
    u_map = potential_energy(model, (X, Y), {}, z_map)
    u_rand = potential_energy(model, (X, Y), {}, info.z)
    assert u_map < u_rand


def test_s3hmc_runs_on_tiny_bnn(tiny, tmp_path):
    model, z = tiny
    mcmc = MCMC(S3HMC(model), num_warmup=30, num_samples=10, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), X, Y, init_params=z, extra_fields=("num_grad_evals",))
    s = mcmc.get_samples()
    assert s["net/Dense_0.kernel"].shape == (10, 1, 4)
    assert s["tau_y"].shape == (10,)
    assert all(np.isfinite(np.asarray(v)).all() for v in s.values())
    pred = predict(model, s, X)
    summary = regression_summary(pred["mean"], pred["var"])
    assert summary["total"].shape == (X.shape[0],)
    # to ArviZ (either version) and to netCDF: flax's "/" in site names written as "."
    from numpyro_s3hmc import from_numpyro
    from numpyro_s3hmc._arviz import group_names

    idata = from_numpyro(mcmc)
    assert "net.Dense_0.kernel" in idata.posterior.data_vars
    assert "log_likelihood" in group_names(idata)
    idata.to_netcdf(str(tmp_path / "bnn.nc"))


def test_user_prior_dict_with_random_flax_module():
    """The helper's check on a hand-written model's prior dict, then the model samples."""
    prior_keys = list(param_names(MLP(hidden=4), (1, 1)))

    def model(x, y=None):
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        prior = {k: dist.Normal(0.0, 1 / jnp.sqrt(tau)) for k in prior_keys}
        check_prior_keys(MLP(hidden=4), prior, (1, 1), require_all=True)
        net = random_flax_module("net", MLP(hidden=4), prior, input_shape=(1, 1))
        numpyro.sample("y", dist.Normal(net(x).squeeze(-1), 0.1), obs=y)

    p = partition_sites(model, (X, Y))
    np.testing.assert_array_equal(p.hyper_sites["tau"].q, 4 + 4 + 4 + 1)


@pytest.mark.parametrize(
    "kernel_size, strides, padding",
    [
        ((3, 3), 1, "SAME"),
        ((3, 3), 2, 1),  # examples/bnn_cnn.py's
        ((5, 5), 1, "VALID"),  # the paper's LeNet's
        ((2, 3), (2, 1), "SAME"),  # even window: SAME pads more after than before
        ((3, 2), 2, ((0, 2), (1, 0))),
    ],
)
def test_patch_conv_is_flax_conv(kernel_size, strides, padding):
    """The same parameters (shapes and initial values) and outputs as ``nn.Conv``."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, 2))
    conv = PatchConv(4, kernel_size, strides=strides, padding=padding)
    ref = nn.Conv(4, kernel_size, strides=strides, padding=padding)
    params = conv.init(jax.random.PRNGKey(1), x)["params"]
    ref_params = ref.init(jax.random.PRNGKey(1), x)["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
    np.testing.assert_array_equal(params["kernel"], ref_params["kernel"])
    params = {**params, "bias": jnp.arange(4.0, dtype=jnp.float32)}  # not zero
    out = conv.apply({"params": params}, x)
    expected = ref.apply({"params": params}, x)
    assert out.shape == expected.shape
    tol = 1e-12 if x.dtype == jnp.float64 else 1e-5  # summed in another order
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_patch_conv_rejects_what_it_does_not_do():
    key, x = jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 1))
    with pytest.raises(ValueError, match="PatchConv: padding must be"):
        PatchConv(4, (3, 3), padding="CIRCULAR").init(key, x)
    with pytest.raises(ValueError, match=r"kernel_size must be \(height, width\)"):
        PatchConv(4, 3).init(key, x)  # nn.Conv would take an int for a 1-D convolution
    with pytest.raises(ValueError, match=r"an input of shape \(5, 5, 1\)"):
        PatchConv(4, (3, 3)).init(key, x[0])
