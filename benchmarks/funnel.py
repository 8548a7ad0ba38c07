"""ESS of τ per 1,000 gradients and per second on the prior-only Gamma funnel.

τ ~ Gamma(2, 1), x | τ ~ N(0, 1/τ) in 50 dimensions, centred; the posterior is
the prior, so E[τ] = 2 and Var[τ] = 2 are checked alongside. Every sampler runs
in this one process on the same draws budget, so the ratios are comparable.

    python benchmarks/funnel.py [--dim 50] [--num-warmup 1000] [--num-samples 2000]
"""

import argparse
import time

import arviz as az
import numpy as np

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from numpyro_s3hmc import S3HMC


def funnel(dim):
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("x", dist.Normal(0.0, 1.0 / jnp.sqrt(tau)).expand([dim]))


def bench(name, kernel, args, cost_field):
    mcmc = MCMC(
        kernel,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.PRNGKey(args.seed), args.dim, extra_fields=(cost_field,))
    jax.block_until_ready(mcmc.last_state)
    t1 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(args.seed + 1), args.dim, extra_fields=(cost_field,))
    jax.block_until_ready(mcmc.get_samples())
    t2 = time.perf_counter()
    tau = np.asarray(mcmc.get_samples(group_by_chain=True)["tau"])
    fields = mcmc.get_extra_fields()
    grads = int(np.sum(fields[cost_field]))
    ess = float(az.ess(tau))
    return {
        "sampler": name,
        "E[tau]": tau.mean(),
        "Var[tau]": tau.var(),
        "ESS(tau)": ess,
        "grads/draw": grads / tau.size,
        "ESS/1k grads": 1000 * ess / grads,
        "ESS/s": ess / (t2 - t1),
        "warmup+compile s": t1 - t0,
        "sampling s": t2 - t1,
        "divergences": int(np.sum(fields["diverging"])),
        "R-hat": float(az.rhat(tau)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = lambda dim: funnel(dim)  # noqa: E731
    rows = [
        bench("NUTS (centred)", NUTS(model), args, "num_steps"),
        bench("S3HMC splitting", S3HMC(model, integrator="splitting"), args, "num_grad_evals"),
        bench("S3HMC alba", S3HMC(model, integrator="alba"), args, "num_grad_evals"),
        bench(
            "S3HMC implicit_alba",
            S3HMC(model, integrator="implicit_alba"),
            args,
            "num_grad_evals",
        ),
    ]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.3g}" for v in r.values()) + " |")


if __name__ == "__main__":
    main()
