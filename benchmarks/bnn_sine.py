"""S3HMC against NUTS on the paper's sine BNN (appendix C), centred and non-centred.

y = sin(x) + N(0, 0.1²) at 50 points, a [1, 50, 1] tanh network, a Gamma(2, 1)
precision for each layer's weights and biases and for the output noise. Plain
NumPyro (no flax) so the non-centred variant is a one-line change.

    python benchmarks/bnn_sine.py [--num-warmup 1000] [--num-samples 1000] [--num-chains 2]
"""

import argparse

import numpy as np
import pandas as pd

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import NUTS

from numpyro_s3hmc import S3HMC, compare_samplers

HIDDEN = 50


def data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-3, 3, n)).astype(np.float32)
    y = (np.sin(x) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return jnp.asarray(x[:, None]), jnp.asarray(y)


def layer(name, shape, tau, centred):
    if centred:
        return numpyro.sample(name, dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand(shape).to_event())
    raw = numpyro.sample(name + "_raw", dist.Normal(0.0, 1.0).expand(shape).to_event())
    return raw / jnp.sqrt(tau)


def bnn(x, y=None, centred=True):
    taus = {k: numpyro.sample(f"tau_{k}", dist.Gamma(2.0, 1.0)) for k in ("w1", "b1", "w2", "b2")}
    w1 = layer("w1", (1, HIDDEN), taus["w1"], centred)
    b1 = layer("b1", (HIDDEN,), taus["b1"], centred)
    w2 = layer("w2", (HIDDEN, 1), taus["w2"], centred)
    b2 = layer("b2", (1,), taus["b2"], centred)
    f = (jnp.tanh(x @ w1 + b1) @ w2 + b2).squeeze(-1)
    tau_y = numpyro.sample("tau_y", dist.Gamma(2.0, 1.0))
    numpyro.sample("y", dist.Normal(f, 1 / jnp.sqrt(tau_y)), obs=y)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--num-chains", type=int, default=2)
    args = p.parse_args()
    x, y = data()
    noncentred = lambda x, y=None: bnn(x, y, centred=False)  # noqa: E731
    kernels = {
        "S3HMC": S3HMC(bnn),
        "NUTS centred": NUTS(bnn),
        "NUTS non-centred": NUTS(noncentred),
    }
    table, _ = compare_samplers(
        kernels,
        x,
        y,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        rng_key=jax.random.PRNGKey(0),
        progress_bar=False,
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string())


if __name__ == "__main__":
    main()
