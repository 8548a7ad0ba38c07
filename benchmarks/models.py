"""The benchmark models: each centred (as users write it), hand non-centred, and
with the exact conjugate Gamma update that ``HMCGibbs`` needs.

Every model is plain NumPyro so that the non-centred variant is a one-line
change. A non-centred model records the centred values as deterministic sites
of the same names, so every sampler is scored on the same quantities.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist

ALPHA, BETA = 2.0, 1.0  # every precision: Gamma(2, 1)


def scaled_normal(name, shape, tau, centred):
    """``name ~ N(0, 1/sqrt(tau))``, or ``name_raw ~ N(0, 1)`` scaled when not centred."""
    if centred:
        return numpyro.sample(name, dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand(shape).to_event())
    raw = numpyro.sample(name + "_raw", dist.Normal(0.0, 1.0).expand(shape).to_event())
    return numpyro.deterministic(name, raw / jnp.sqrt(tau))


def gamma_given_normal(key, values, count):
    """Draw τ | values ~ Gamma(α + count/2, β + Σ values²/2): the conjugate update."""
    rate = BETA + 0.5 * jnp.sum(values**2)
    return jax.random.gamma(key, ALPHA + 0.5 * count) / rate


# --- the prior-only Gamma funnel: the posterior is the prior ---------------------------


def funnel(dim, centred=True):
    tau = numpyro.sample("tau", dist.Gamma(ALPHA, BETA))
    scaled_normal("x", (dim,), tau, centred)


def funnel_gibbs(rng_key, gibbs_sites, hmc_sites):
    x = hmc_sites["x"]
    return {"tau": gamma_given_normal(rng_key, x, x.size)}


# --- hierarchical logistic regression: one precision per group of features -------------


def breast_cancer():
    """scikit-learn's breast cancer data, standardised: 569 × 30, three groups of
    ten features (the means, standard errors and worst values of ten measurements)."""
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)


GROUPS = ("mean", "se", "worst")


def logistic(X, y=None, centred=True):
    w = []
    for g, name in enumerate(GROUPS):
        tau = numpyro.sample(f"tau_{name}", dist.Gamma(ALPHA, BETA))
        w.append(scaled_normal(f"w_{name}", (10,), tau, centred))
    b = numpyro.sample("b", dist.Normal(0.0, 3.0))
    logits = X @ jnp.concatenate(w) + b
    numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def logistic_gibbs(rng_key, gibbs_sites, hmc_sites):
    keys = jax.random.split(rng_key, len(GROUPS))
    return {
        f"tau_{name}": gamma_given_normal(k, hmc_sites[f"w_{name}"], 10)
        for k, name in zip(keys, GROUPS)
    }


# --- Bayesian neural networks: a Gamma precision per layer's weights and biases --------

LAYERS = ("w1", "b1", "w2", "b2")


def sine(n=50, seed=0):
    """The paper's appendix C data: y = sin(x) + N(0, 0.1²), x ~ U(-3, 3)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-3, 3, n)).astype(np.float32)
    y = (np.sin(x) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return jnp.asarray(x[:, None]), jnp.asarray(y)


def diabetes():
    """scikit-learn's diabetes data, standardised inputs and target: 442 × 10."""
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)


def bnn_forward(x, params):
    return (jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]).squeeze(-1)


def bnn(x, y=None, hidden=50, centred=True):
    shapes = {"w1": (x.shape[1], hidden), "b1": (hidden,), "w2": (hidden, 1), "b2": (1,)}
    taus = {k: numpyro.sample(f"tau_{k}", dist.Gamma(ALPHA, BETA)) for k in LAYERS}
    params = {k: scaled_normal(k, shapes[k], taus[k], centred) for k in LAYERS}
    tau_y = numpyro.sample("tau_y", dist.Gamma(ALPHA, BETA))
    numpyro.sample("y", dist.Normal(bnn_forward(x, params), 1 / jnp.sqrt(tau_y)), obs=y)


def bnn_gibbs(x, y):
    """The conjugate update of every precision given the weights (and the data)."""

    def gibbs_fn(rng_key, gibbs_sites, hmc_sites):
        keys = jax.random.split(rng_key, len(LAYERS) + 1)
        out = {
            f"tau_{k}": gamma_given_normal(key, hmc_sites[k], hmc_sites[k].size)
            for key, k in zip(keys, LAYERS)
        }
        residual = y - bnn_forward(x, hmc_sites)
        out["tau_y"] = gamma_given_normal(keys[-1], residual, residual.size)
        return out

    return gibbs_fn


# --- the suite --------------------------------------------------------------------------


@dataclass
class Benchmark:
    """A model, its data, and the draws budget of its runs (full and quick)."""

    name: str
    model: Any  # model(*args, centred=...)
    args: tuple
    gibbs_fn: Any  # conjugate update of the hyperparameters, or None
    hyper: tuple  # the Gamma sites
    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    kwargs: dict = field(default_factory=dict)

    def centred(self, *args, **kwargs):
        return self.model(*args, **kwargs, **self.kwargs, centred=True)

    def noncentred(self, *args, **kwargs):
        return self.model(*args, **kwargs, **self.kwargs, centred=False)


def benchmarks() -> dict[str, Benchmark]:
    x_sine, y_sine = sine()
    x_dia, y_dia = diabetes()
    out = {
        f"funnel {d}-D": Benchmark(
            f"funnel {d}-D",
            lambda d=d, **kw: funnel(d, **kw),
            (),
            funnel_gibbs,
            ("tau",),
            num_samples=2000,
        )
        for d in (10, 100, 1000)
    }
    out["logistic"] = Benchmark(
        "logistic",
        logistic,
        breast_cancer(),
        logistic_gibbs,
        tuple(f"tau_{g}" for g in GROUPS),
    )
    hyper = tuple(f"tau_{k}" for k in LAYERS) + ("tau_y",)
    out["BNN sine"] = Benchmark(
        "BNN sine", bnn, (x_sine, y_sine), bnn_gibbs(x_sine, y_sine), hyper, num_chains=2
    )
    out["BNN diabetes"] = Benchmark(
        "BNN diabetes",
        bnn,
        (x_dia, y_dia),
        bnn_gibbs(x_dia, y_dia),
        hyper,
        num_chains=2,
        kwargs={"hidden": 16},
    )
    return out
