"""Cost of one integrator step divided by the cost of one gradient of the potential.

Both are timed as 2,000 iterations inside one jitted ``lax.fori_loop`` on the
same model and point, after a warm-up call, so dispatch and compilation are
excluded; the ratio is the sampler's overhead per gradient.

    python benchmarks/overhead.py
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc.integrators import INTEGRATORS, IntegratorState, build_integrator
from numpyro_s3hmc.partition import split_z

sys.path.insert(0, str(Path(__file__).parent))
from bnn_sine import bnn, data  # noqa: E402

ITERS = 2000


def funnel(dim):
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("x", dist.Normal(0.0, 1.0 / jnp.sqrt(tau)).expand([dim]))


def timed(fn, x):
    fn(x).block_until_ready()
    t = time.perf_counter()
    fn(x).block_until_ready()
    return (time.perf_counter() - t) / ITERS


def overhead(name, model, args):
    kernel = S3HMC(model)
    state = kernel.init(jax.random.PRNGKey(0), 0, None, args, {})
    potential_fn = kernel._potential_fn_gen(*args)
    grad = jax.grad(potential_fn)

    @jax.jit
    def many_grads(z):
        body = lambda i, z: jax.tree.map(lambda a, g: a - 1e-6 * g, z, grad(z))  # noqa: E731
        return jax.tree.leaves(jax.lax.fori_loop(0, ITERS, body, z))[0]

    t_grad = timed(many_grads, state.z)
    row = [name, f"{1e6 * t_grad:.1f} µs"]
    d = state.metric_state.data_precision
    for integrator in INTEGRATORS:
        kernel._integrator = integrator

        @jax.jit
        def many_steps(z):
            potential_and_grad, metric, _ = kernel._hamiltonian_parts(args, {}, d, d.dtype)
            step = build_integrator(integrator, potential_and_grad, metric)
            theta, eta = split_z(z, kernel.partition)
            u, g_theta, g_eta = potential_and_grad(theta, eta)
            s = IntegratorState(theta, eta, 0 * theta, 0 * eta, u, g_theta, g_eta)
            body = lambda i, s: step(s, 1e-3)[0]  # noqa: E731
            return jax.lax.fori_loop(0, ITERS, body, s).theta

        t_step = timed(many_steps, state.z)
        grads = 1 if integrator == "splitting" else 3
        row.append(f"{t_step / (grads * t_grad):.2f}")
    return row


def main():
    x, y = data()
    rows = [
        overhead("funnel 10-D", funnel, (10,)),
        overhead("funnel 100-D", funnel, (100,)),
        overhead("funnel 1000-D", funnel, (1000,)),
        overhead("BNN sine [1, 50, 1]", bnn, (x, y)),
    ]
    print("| model | one gradient | " + " | ".join(f"{i} step / gradients" for i in INTEGRATORS))
    print("|---|---|" + "---|" * len(INTEGRATORS))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
