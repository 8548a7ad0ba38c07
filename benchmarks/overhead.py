"""Cost of one integrator step divided by the cost of the gradients it evaluates.

Both are timed as 1,000 iterations inside one jitted ``lax.fori_loop`` on the
same model and point, the fastest of seven calls after a warm-up call, so
dispatch, compilation and most of the noise of other work are excluded; the
ratio is the sampler's overhead per gradient (1 would be free). The splitting
step evaluates one gradient of U, an ALBA step three.

    python benchmarks/overhead.py
"""

import time

import jax

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc.integrators import INTEGRATORS, IntegratorState, build_integrator
from numpyro_s3hmc.partition import split_z

ITERS = 1000


def _timed(fn, x, repeats=7):
    """Seconds per iteration: the fastest of ``repeats`` calls, the least disturbed
    by other work on the machine."""
    fn(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times) / ITERS


def overhead(model, args) -> dict[str, float]:
    """Seconds per gradient of U, and each integrator's step over its gradients."""
    kernel = S3HMC(model)
    state = kernel.init(jax.random.PRNGKey(0), 0, None, args, {})
    grad = jax.grad(kernel._potential_fn_gen(*args))

    @jax.jit
    def many_grads(z):
        body = lambda i, z: jax.tree.map(lambda a, g: a - 1e-6 * g, z, grad(z))  # noqa: E731
        return jax.tree.leaves(jax.lax.fori_loop(0, ITERS, body, z))[0]

    z = kernel.model_z(state.z)  # the sampled model's names (a non-centred site's too)
    t_grad = _timed(many_grads, z)
    out = {"gradient (s)": t_grad}
    metric_state = state.metric_state
    d = metric_state.data_precision
    for integrator in INTEGRATORS:

        @jax.jit
        def many_steps(z, integrator=integrator):
            potential_and_grad, metric, _ = kernel._hamiltonian_parts(
                args, {}, metric_state, d.dtype
            )
            step, _ = build_integrator(integrator, potential_and_grad, metric)
            theta, eta = split_z(z, kernel.partition)
            u, g_theta, g_eta = potential_and_grad(theta, eta)
            s = IntegratorState(theta, eta, 0 * theta, 0 * eta, u, g_theta, g_eta)
            body = lambda i, s: step(s, 1e-3)[0]  # noqa: E731
            return jax.lax.fori_loop(0, ITERS, body, s).theta

        t_step = _timed(many_steps, z)
        parts = kernel._hamiltonian_parts(args, {}, metric_state, d.dtype)
        _, grads_per_step = build_integrator(integrator, *parts[:2])
        out[integrator] = t_step / (grads_per_step * t_grad)
    return out


def main():
    from models import benchmarks

    print("| model | one gradient | " + " | ".join(f"{i} step / gradients" for i in INTEGRATORS))
    print("|---|---|" + "---|" * len(INTEGRATORS))
    for name, bench in benchmarks().items():
        row = overhead(bench.centred, bench.args)
        cells = [f"{row[i]:.2f}" for i in INTEGRATORS]
        print(f"| {name} | {1e6 * row['gradient (s)']:.1f} µs | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
