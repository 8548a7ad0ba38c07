"""BNNs written with flax.nnx (and linen) sample with S3HMC unchanged.

The partition must tie each ``net/...kernel`` / ``net/...bias`` site to its own
Gamma precision, per tensor (separate kernel and bias precisions) or per layer,
for both flax APIs, whether the model is hand-written with
``random_nnx_module`` or built by :func:`numpyro_s3hmc.bnn.hierarchical_bnn`.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import linen, nnx

import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_nnx_module
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC, partition_sites
from numpyro_s3hmc.bnn import check_prior_keys, hierarchical_bnn, param_names, predict

X = jnp.linspace(-2.0, 2.0, 12)[:, None]
Y = jnp.sin(X[:, 0])
H = 3


class NnxMLP(nnx.Module):
    """[1, H, H, 1] tanh network; the layers are in an ``nnx.List`` (names ``layers.0...``)."""

    def __init__(self, sizes=(1, H, H, 1), *, rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


class NnxNamed(nnx.Module):
    """Two named layers (names ``hidden.kernel``, ``out.bias``, ...)."""

    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(1, H, rngs=rngs)
        self.out = nnx.Linear(H, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = jnp.tanh(linen.Dense(H)(x))
        x = jnp.tanh(linen.Dense(H)(x))
        return linen.Dense(1)(x)


NNX_SHAPES = {
    "layers.0.bias": (H,),
    "layers.0.kernel": (1, H),
    "layers.1.bias": (H,),
    "layers.1.kernel": (H, H),
    "layers.2.bias": (1,),
    "layers.2.kernel": (H, 1),
}
LINEN_SHAPES = {
    "Dense_0.kernel": (1, H),
    "Dense_0.bias": (H,),
    "Dense_1.kernel": (H, H),
    "Dense_1.bias": (H,),
    "Dense_2.kernel": (H, 1),
    "Dense_2.bias": (1,),
}


def nnx_net():
    return NnxMLP(rngs=nnx.Rngs(0))


def test_param_names_nnx():
    assert param_names(nnx_net()) == NNX_SHAPES
    assert param_names(NnxNamed(rngs=nnx.Rngs(0))) == {
        "hidden.bias": (H,),
        "hidden.kernel": (1, H),
        "out.bias": (1,),
        "out.kernel": (H, 1),
    }
    # batch statistics and RNG state are not parameters; BatchNorm's scale and bias are
    bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    assert param_names(bn) == {"bias": (4,), "scale": (4,)}


def test_param_names_linen_needs_input_shape():
    assert param_names(LinenMLP(), (1, 1)) == LINEN_SHAPES
    with pytest.raises(ValueError, match="input_shape"):
        param_names(LinenMLP())


def test_check_prior_keys_nnx():
    good = {k: dist.Normal(0.0, 1.0) for k in NNX_SHAPES}
    check_prior_keys(nnx_net(), good, require_all=True)
    # linen-style names on an nnx module match nothing: NumPyro would ignore them
    linen_style = {k: dist.Normal(0.0, 1.0) for k in LINEN_SHAPES}
    with pytest.raises(ValueError, match=r"Dense_0\.kernel.*match no parameter of NnxMLP"):
        check_prior_keys(nnx_net(), linen_style)
    typo = dict(good)
    typo["layers.0.weight"] = typo.pop("layers.0.kernel")
    with pytest.raises(ValueError, match=r"layers\.0\.weight.*Valid keys.*layers\.0\.kernel"):
        check_prior_keys(nnx_net(), typo)
    partial = {"layers.1.kernel": dist.Normal(0.0, 1.0)}
    check_prior_keys(nnx_net(), partial)
    with pytest.raises(ValueError, match=r"parameters \['layers\.0\.bias'"):
        check_prior_keys(nnx_net(), partial, require_all=True)


def test_ignored_prior_key_is_why_the_check_exists():
    """A misspelt key leaves that tensor out of the latent sites, silently."""
    typo = {k: dist.Normal(0.0, 1.0) for k in NNX_SHAPES}
    typo["layers.0.weight"] = typo.pop("layers.0.kernel")

    def model(x, y=None):
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        prior = {k: dist.Normal(0.0, 1 / jnp.sqrt(tau)) for k in typo}
        net = random_nnx_module("net", nnx_net(), prior)
        numpyro.sample("y", dist.Normal(net(x)[:, 0], 0.1), obs=y)

    p = partition_sites(model, (X, Y))
    assert "net/layers.0.kernel" not in p.params
    assert "net/layers.0.weight" not in p.params
    assert len(p.params) == len(NNX_SHAPES) - 1


def _user_nnx_model(per: str, module):
    """A hand-written BNN with ``random_nnx_module`` and Gamma precisions."""
    names = list(param_names(module))

    def hyper(k):
        layer, _, leaf = k.rpartition(".")
        return "tau_" + (layer if per == "layer" else k).replace(".", "_")

    def model(x, y=None):
        taus = {}
        for k in names:
            s = hyper(k)
            if s not in taus:
                taus[s] = numpyro.sample(s, dist.Gamma(2.0, 1.0))
        prior = {k: dist.Normal(0.0, 1.0 / jnp.sqrt(taus[hyper(k)])) for k in names}
        check_prior_keys(module, prior, require_all=True)
        net = random_nnx_module("net", module, prior)
        tau_y = numpyro.sample("tau_y", dist.Gamma(2.0, 0.1))
        numpyro.sample("y", dist.Normal(net(x)[:, 0], 1 / jnp.sqrt(tau_y)), obs=y)

    return model, {f"net/{k}": hyper(k) for k in names}


def _builder_model(api: str, per: str):
    if api == "nnx":
        module, shapes = nnx_net(), NNX_SHAPES
        model = hierarchical_bnn(module, precisions=per)
    else:
        module, shapes = LinenMLP(), LINEN_SHAPES
        model = hierarchical_bnn(module, (1, 1), precisions=per)
    return model, model.param_sites, shapes


def expected_tau(name: str, per: str) -> str:
    layer, _, leaf = name.rpartition(".")
    return "tau_" + (layer if per == "layer" else name).replace(".", "_")


def check_partition(model, links: dict, shapes: dict, *, tau_y: bool = True):
    """Every parameter site is governed by exactly its precision; Q counts its elements."""
    p = partition_sites(model, (X, Y))
    assert set(p.params) == set(links)
    for site, tau in links.items():
        info = p.param_sites[site]
        assert info.governed_by == (tau,), (site, info.governed_by)
        assert info.governed.all()
        assert info.shape == shapes[site.removeprefix("net/")]
    hypers = set(links.values()) | ({"tau_y"} if tau_y else set())
    assert set(p.hyper) == hypers
    for tau in set(links.values()):
        governs = {s for s, t in links.items() if t == tau}
        assert set(p.hyper_sites[tau].governs) == governs
        q = sum(int(np.prod(shapes[s.removeprefix("net/")])) for s in governs)
        np.testing.assert_array_equal(p.hyper_sites[tau].q, q)
        np.testing.assert_allclose(p.hyper_sites[tau].c, q / 2 + 2.0 - 1.0)
    return p


@pytest.mark.parametrize("per", ["tensor", "layer"])
def test_user_nnx_model_partition(per):
    model, links = _user_nnx_model(per, nnx_net())
    check_partition(model, links, NNX_SHAPES)
    assert len(set(links.values())) == (6 if per == "tensor" else 3)
    for site, tau in links.items():
        assert tau == expected_tau(site.removeprefix("net/"), per)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("per", ["tensor", "layer"])
def test_builder_partition(api, per):
    model, links, shapes = _builder_model(api, per)
    check_partition(model, links, shapes)
    for site, tau in links.items():
        assert tau == expected_tau(site.removeprefix("net/"), per)
    assert model.precision_sites == tuple(dict.fromkeys(links.values()))


def test_bad_precisions():
    with pytest.raises(ValueError, match="precisions"):
        hierarchical_bnn(nnx_net(), precisions="network")


def run_s3hmc(model, num_chains=1, coordinates="auto"):
    mcmc = MCMC(
        S3HMC(model, coordinates=coordinates),
        num_warmup=15,
        num_samples=6,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(3), X, Y, extra_fields=("num_grad_evals",))
    return mcmc


def check_draws(samples, links, shapes, num_draws):
    assert set(samples) == set(links) | set(links.values()) | {"tau_y"}
    for site, tau in links.items():
        assert samples[site].shape == (num_draws, *shapes[site.removeprefix("net/")])
        assert samples[tau].shape == (num_draws,)
    for k, v in samples.items():
        v = np.asarray(v)
        assert np.isfinite(v).all(), k
    for tau in set(links.values()):
        assert (np.asarray(samples[tau]) > 0).all()
        assert np.ptp(np.asarray(samples[tau])) > 0, f"{tau} never moved"


def test_s3hmc_user_nnx_per_tensor():
    module = nnx_net()
    before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(module, nnx.Param))]
    model, links = _user_nnx_model("tensor", module)
    mcmc = run_s3hmc(model)
    s = mcmc.get_samples()
    check_draws(s, links, NNX_SHAPES, 6)
    assert (np.asarray(mcmc.get_extra_fields()["num_grad_evals"]) > 0).all()
    # the user's module keeps its concrete weights: no tracer leaked into it
    after = jax.tree.leaves(nnx.state(module, nnx.Param))
    assert len(after) == len(before) == len(NNX_SHAPES)
    for a, b in zip(after, before, strict=True):
        assert not isinstance(a, jax.core.Tracer)
        np.testing.assert_array_equal(np.asarray(a), b)
    # the module is still callable outside the model
    assert module(X).shape == (X.shape[0], 1)


def test_s3hmc_builder_nnx_per_layer():
    model, links, shapes = _builder_model("nnx", "layer")
    # centred: the default's non-centred names are checked on the user's nnx model
    # above, and its pilot would add a second compilation here
    mcmc = run_s3hmc(model, coordinates="centred")
    s = mcmc.get_samples()
    check_draws(s, links, shapes, 6)
    pred = predict(model, s, X)
    assert pred["mean"].shape == pred["var"].shape == (6, X.shape[0])
    assert np.isfinite(np.asarray(pred["mean"])).all()


def test_s3hmc_builder_linen_per_layer():
    model, links, shapes = _builder_model("linen", "layer")
    s = run_s3hmc(model, coordinates="centred").get_samples()  # as above
    check_draws(s, links, shapes, 6)
