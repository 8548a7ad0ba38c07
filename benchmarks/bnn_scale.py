"""BNN scale: S3HMC's cost per gradient from 10³ to 4·10⁵ parameters.

Flax linen MLPs and CNNs wrapped by :func:`numpyro_s3hmc.bnn.hierarchical_bnn`
(a ``Gamma(2, 1)`` precision for the kernel and another for the bias of every
layer, a categorical likelihood over 10 classes), from a 1,210-parameter MLP on
8×8 inputs to the S3HMC paper's LeNet on 28×28 inputs (conv 5×5 20 channels,
max-pool 2, conv 5×5 50 channels, max-pool 2, dense 500, dense 10, VALID
padding: 431,080 parameters). The two CNNs come twice: with ``nn.Conv`` as a
user writes them, and (``-patches``) with :class:`numpyro_s3hmc.bnn.PatchConv`,
the same convolutions and parameters as slices and a matrix product, which XLA's
CPU backend runs several times faster inside the sampler's loops. The inputs are
synthetic (standard normal pixels, uniformly random labels, ``--num-data``
images, one full batch): the numbers are costs, not accuracies.

Each network runs in its own Python process (XLA's CPU backend has crashed
after many compilations in one process), one after the other, and reports:

- ``θ`` and ``η``: the sizes of the parameter and hyperparameter blocks of
  S3HMC's partition;
- ``gradient``: seconds per gradient of the potential U, timed as in
  ``benchmarks/overhead.py``: many gradients in one jitted ``lax.fori_loop``
  (as many as fill about ``--loop-seconds``, at least 10), the fastest of
  ``--repeats`` rounds after a warm-up call;
- for each integrator, one step's time in the same kind of loop divided by the
  time of the gradients of U it evaluates (1 would be free): the gradient's loop
  and every integrator's are called in turn, round after round, and the ratio is
  the median over the rounds of each round's own (the machine's speed drifts
  between calls more than within a round);
- ``compile``: seconds JAX reports tracing, lowering and compiling
  (``jax.monitoring``, as :func:`numpyro_s3hmc.compare_samplers` counts them)
  during a fresh ``MCMC`` warmup and run of S3HMC with its defaults, except
  trajectories capped at ``--max-steps`` integrator steps (a constant in the
  program), for two numbers of draws;
- ``in a chain``: seconds per gradient of S3HMC's sampling-phase transitions
  (momenta, capped trajectory, Metropolis test), from the end of that run, in a
  jitted ``lax.fori_loop`` of ``kernel.sample`` timed the same way;
- peak memory: the process's peak resident set (``ru_maxrss``) after S3HMC's
  runs, and the same minus the process's resident set before the network was
  built; on a GPU, ``memory_stats()["peak_bytes_in_use"]`` of the device;
- NUTS: NumPyro's NUTS (defaults) on the same model, the same warmup and draws:
  its time per gradient and per draw in the sampling phase, skipped when the
  measured gradient time predicts more than ``--nuts-budget`` seconds at
  1,023 gradients a draw.

    python benchmarks/bnn_scale.py                     # every size, CPU, prints the tables
    python benchmarks/bnn_scale.py --write             # and replaces the section in results.md
    python benchmarks/bnn_scale.py --sizes mlp-1k lenet-431k
    python benchmarks/bnn_scale.py --quick             # the two smallest, tiny repeats (the test)
    python benchmarks/bnn_scale.py --platform gpu      # the same on a GPU
    python benchmarks/bnn_scale.py --sizes --throughput lenet-431k   # draws per second

``--throughput`` then samples the named networks as a user would
(:func:`throughput`): the digits, a MAP start, S3HMC's warmup and draws, one
chain, and reports draws per second, gradients per draw and the test accuracy.
``--write`` puts the tables in ``benchmarks/results.md``'s section for the
platform (CPU or GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADINGS = {
    "cpu": "## BNN scale: cost per gradient from 10^3 to 4·10^5 parameters",
    "gpu": "## BNN scale on a GPU",
}
MARKERS = {  # results.md's section for each platform
    "cpu": ("<!-- bnn-scale:start -->", "<!-- bnn-scale:end -->"),
    "gpu": ("<!-- bnn-scale-gpu:start -->", "<!-- bnn-scale-gpu:end -->"),
}

# name: (architecture, hidden sizes or None, input shape of one image)
SIZES = {
    "mlp-1k": ("mlp", (16,), (64,)),
    "mlp-10k": ("mlp", (128,), (64,)),
    "cnn-38k": ("cnn8", None, (8, 8, 1)),
    "mlp-100k": ("mlp", (128,), (784,)),
    "mlp-400k": ("mlp", (500,), (784,)),
    "lenet-431k": ("lenet", None, (28, 28, 1)),
    # the same CNNs with numpyro_s3hmc.bnn.PatchConv for nn.Conv (the same parameters)
    "cnn-38k-patches": ("cnn8-patches", None, (8, 8, 1)),
    "lenet-431k-patches": ("lenet-patches", None, (28, 28, 1)),
}
QUICK = ("mlp-1k", "mlp-10k")
NUTS_GRADS_PER_DRAW = 1023  # NumPyro NUTS's max_tree_depth=10 at worst


def build_module(arch: str, hidden):
    """The flax linen module of an architecture in :data:`SIZES`."""
    from flax import linen as nn

    from numpyro_s3hmc.bnn import PatchConv

    class MLP(nn.Module):
        hidden: tuple

        @nn.compact
        def __call__(self, x):
            for h in self.hidden:
                x = nn.tanh(nn.Dense(h)(x))
            return nn.Dense(10)(x)

    class CNN8(nn.Module):
        """For 8×8 images: conv 3×3 16, conv 3×3 32, avg-pool 2, dense 64, dense 10."""

        conv: type = nn.Conv

        @nn.compact
        def __call__(self, x):
            x = nn.relu(self.conv(16, (3, 3))(x))
            x = nn.relu(self.conv(32, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    class LeNet(nn.Module):
        """The S3HMC paper's LeNet for 28×28 images (431,080 parameters)."""

        conv: type = nn.Conv

        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(self.conv(20, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = nn.max_pool(nn.relu(self.conv(50, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    return {
        "mlp": lambda: MLP(tuple(hidden)),
        "cnn8": CNN8,
        "lenet": LeNet,
        "cnn8-patches": lambda: CNN8(PatchConv),
        "lenet-patches": lambda: LeNet(PatchConv),
    }[arch]()


def _rss_mb() -> float:
    """The process's resident set now (Linux), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# a call of a timed loop also pays costs that do not grow with its iterations (XLA
# allocating and first touching the loop's buffers: 204 MB for LeNet's transition); with
# 3 iterations a call, LeNet's gradient measured 82 ms and its splitting step 1.28
# gradients, with 12, 67 ms and 1.18 (2026-12-07), so every loop runs at least this many
MIN_ITERATIONS = 10


def _loop_timer(fn, z, target_s: float, repeats: int) -> tuple[float, int]:
    """Seconds per iteration of ``fn(z, n)`` (n iterations in one jitted loop): the
    fastest of ``repeats`` calls of :func:`_loop_timers`."""
    (times, n) = _loop_timers({"fn": fn}, z, target_s, repeats)["fn"]
    return min(times), n


def _loop_timers(fns: dict, z, target_s: float, repeats: int) -> dict:
    """{name: (seconds per iteration in each round, n)} for each ``fn(z, n)`` (n
    iterations in one jitted loop), n chosen per function so that a call takes about
    ``target_s`` (at least ``MIN_ITERATIONS``), after a compiling call and a calibrating
    one.

    The functions are called in turn, ``repeats`` rounds of one call each, so that
    the ratio of two of them can be taken within a round: this machine's speed
    drifts between calls (a step measured alone and after two other integrators in
    one process gave 1.22 and 1.64 gradients), far more than within a round."""
    import jax

    counts = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(z, 1))  # compile
        t = time.perf_counter()
        jax.block_until_ready(fn(z, 3))
        per = max((time.perf_counter() - t) / 3, 1e-7)
        counts[name] = int(max(MIN_ITERATIONS, min(100_000, target_s / per)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(z, counts[name]))
            times[name].append((time.perf_counter() - t) / counts[name])
    return {name: (times[name], counts[name]) for name in fns}


def _timed_mcmc(
    kernel, args, num_warmup, num_samples, grad_field, *, split=False, init_params=None
):
    """A fresh ``MCMC`` of ``kernel``: seconds compiling (``jax.monitoring``) and running.

    One ``MCMC.run`` (warmup and sampling in one compiled loop, as a user runs
    it), or with ``split`` ``MCMC.warmup`` then ``MCMC.run``, so that the sampling
    phase's execution time (``sampling (s)``, compile excluded) is known on its own.
    ``grads`` counts the sampling phase's gradients. ``mcmc`` is the finished ``MCMC``.
    """
    import numpy as np

    import jax

    from numpyro.infer import MCMC

    from numpyro_s3hmc.compare import _compile_timer

    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    key = jax.random.PRNGKey(0)
    with _compile_timer() as timer:
        t0 = time.time()
        if split:
            mcmc.warmup(key, *args, init_params=init_params, collect_warmup=False)
            jax.block_until_ready(mcmc.post_warmup_state)
            key, init_params = mcmc.post_warmup_state.rng_key, None
        t1 = time.time()
        mcmc.run(key, *args, init_params=init_params, extra_fields=(grad_field, "diverging"))
        jax.block_until_ready((mcmc.last_state, mcmc.get_samples()))
        t2 = time.time()
    grads = float(np.sum(mcmc.get_extra_fields()[grad_field]))
    out = {
        "mcmc": mcmc,
        "compile (s)": timer.seconds(t0, t2),
        "wall (s)": t2 - t0,
        "executing (s)": (t2 - t0) - timer.seconds(t0, t2),
        "grads": grads,
        "draws": num_samples,
        "grads/draw": grads / num_samples,
        "divergences": int(np.sum(mcmc.get_extra_fields()["diverging"])),
    }
    if split:
        out["sampling (s)"] = (t2 - t1) - timer.seconds(t1, t2)
        out["s/grad"] = out["sampling (s)"] / max(grads, 1.0)
        out["s/draw"] = out["sampling (s)"] / num_samples
    return out


def _chain_cost(kernel, state, args, cfg) -> dict:
    """S3HMC's sampling-phase transitions from ``state`` in a jitted ``lax.fori_loop``
    of ``kernel.sample`` (everything a transition does: momenta, trajectory,
    Metropolis test): seconds per gradient, gradients per transition, and the
    compiled program's buffers as XLA plans them (arguments + outputs + temporaries
    − aliased), which, unlike the process's peak, leave out the compiler's memory."""
    import jax
    import jax.numpy as jnp

    def transitions(state, args, iters):
        def body(i, carry):
            s, grads = carry
            s = kernel.sample(s, args, {})
            return s, grads + s.num_grad_evals

        return jax.lax.fori_loop(0, iters, body, (state, jnp.int32(0)))

    compiled = jax.jit(transitions).lower(state, args, jnp.int32(1)).compile()
    run = lambda s, n: compiled(s, args, jnp.int32(n))  # noqa: E731
    per_transition, iters = _loop_timer(run, state, cfg["loop_seconds"], cfg["repeats"])
    grads = int(run(state, iters)[1]) / iters  # the same key: the same trajectories
    mem = compiled.memory_analysis()
    buffers = float("nan")
    if mem is not None:
        buffers = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        ) / 2**20
    return {
        "S3HMC in-run s/grad": per_transition / max(grads, 1e-9),
        "S3HMC in-run grads/transition": grads,
        "transition buffers (MB)": buffers,
    }


def measure(name: str, cfg: dict) -> dict:
    """Every number for one network, in this process."""

    import jax
    import jax.numpy as jnp

    from numpyro.infer import NUTS

    from numpyro_s3hmc import S3HMC
    from numpyro_s3hmc.bnn import hierarchical_bnn
    from numpyro_s3hmc.integrators import IntegratorState, build_integrator
    from numpyro_s3hmc.partition import split_z

    gpu = cfg["platform"] == "gpu"
    clock = time.perf_counter()
    jnp.zeros(1).block_until_ready()  # the backend up before the baseline
    rss_before = _rss_mb()
    arch, hidden, image = SIZES[name]
    module = build_module(arch, hidden)
    n = cfg["num_data"]
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (n, *image))
    y = jax.random.randint(ky, (n,), 0, 10)
    model = hierarchical_bnn(module, (1, *image), likelihood="classification")
    args = (x, y)
    # the semi-separable sampler's cost, so centred: coordinates="auto" may non-centre
    # the layers, where every precision is a plain parameter and the step plain HMC's
    kernel = S3HMC(model, coordinates="centred", trajectory="static")
    state = kernel.init(jax.random.PRNGKey(0), 0, None, args, {})
    theta, eta = split_z(state.z, kernel.partition)
    row = {"network": name, "θ": int(theta.size), "η": int(eta.size), "N": n}

    # the data are arguments of every timed program, not constants folded into it
    @jax.jit
    def many_grads(z, iters, args):
        grad = jax.grad(kernel._potential_fn_gen(*args))
        body = lambda i, z: jax.tree.map(lambda a, g: a - 1e-6 * g, z, grad(z))  # noqa: E731
        return jax.lax.fori_loop(0, iters, body, z)

    metric_state = state.metric_state
    d = metric_state.data_precision

    def stepper(integrator):
        @jax.jit
        def many_steps(z, iters, args):
            potential_and_grad, metric, _ = kernel._hamiltonian_parts(
                args, {}, metric_state, d.dtype
            )
            step, _ = build_integrator(integrator, potential_and_grad, metric)
            theta, eta = split_z(z, kernel.partition)
            u, g_theta, g_eta = potential_and_grad(theta, eta)
            s = IntegratorState(theta, eta, 0 * theta, 0 * eta, u, g_theta, g_eta)

            def body(i, s):
                return step(s, 1e-4)[0]

            s = jax.lax.fori_loop(0, iters, body, s)
            return jnp.isfinite(s.potential_energy), s.theta

        return many_steps

    steppers = {i: stepper(i) for i in cfg["integrators"]}
    loops = {"gradient": many_grads, **steppers}
    timed = _loop_timers(
        {k: (lambda z, n, f=f: f(z, n, args)) for k, f in loops.items()},
        state.z,
        cfg["loop_seconds"],
        cfg["repeats"],
    )
    t_grads, iters = timed["gradient"]
    row["gradient (s)"] = min(t_grads)
    row["gradient loop iterations"] = iters
    parts = kernel._hamiltonian_parts(args, {}, metric_state, d.dtype)
    for integrator, many_steps in steppers.items():
        _, grads_per_step = build_integrator(integrator, *parts[:2])
        # each round's step over the same round's gradient, the median over the rounds
        ratios = [
            t / (grads_per_step * g) for t, g in zip(timed[integrator][0], t_grads, strict=True)
        ]
        row[f"{integrator} step / gradients"] = statistics.median(ratios)
        row[f"{integrator} step / gradients, per round"] = ratios
        row[f"{integrator} finite"] = bool(many_steps(state.z, 3, args)[0])

    row["loops (s)"] = time.perf_counter() - clock
    clock = time.perf_counter()
    capped = S3HMC(
        model, max_num_steps=cfg["max_steps"], coordinates="centred", trajectory="static"
    )
    runs = [
        _timed_mcmc(capped, args, cfg["num_warmup"], draws, "num_grad_evals")
        for draws in cfg["draws"]
    ]
    last_state = runs[-1]["mcmc"].last_state
    row["S3HMC runs"] = [{k: v for k, v in r.items() if k != "mcmc"} for r in runs]
    row.update(_chain_cost(capped, last_state, args, cfg))
    row["peak RSS (MB)"] = _peak_rss_mb()
    row["RSS before the network (MB)"] = rss_before
    if gpu:
        stats = jax.devices()[0].memory_stats() or {}
        row["peak device memory (MB)"] = stats.get("peak_bytes_in_use", float("nan")) / 2**20

    row["S3HMC runs (s)"] = time.perf_counter() - clock
    clock = time.perf_counter()
    draws = cfg["draws"][0]
    estimate = (cfg["num_warmup"] + draws) * NUTS_GRADS_PER_DRAW * row["gradient (s)"]
    row["NUTS estimate (s)"] = estimate
    if estimate <= cfg["nuts_budget"]:
        r = _timed_mcmc(NUTS(model), args, cfg["num_warmup"], draws, "num_steps", split=True)
        del r["mcmc"]
        row["NUTS"] = r
    else:
        row["NUTS"] = None
    row["NUTS (s)"] = time.perf_counter() - clock
    row["jax"] = jax.__version__
    row["python"] = platform.python_version()
    row["device"] = str(jax.devices()[0].device_kind)
    return row


def digits_for(image: tuple, seed: int = 0, train_fraction: float = 0.7):
    """scikit-learn's 8×8 digits (pixels in [0, 1]) shaped for a network of
    :data:`SIZES`: as they are for 64 inputs, else bilinearly upsampled to 28×28,
    split at random into a training and a test set."""
    import numpy as np
    from sklearn.datasets import load_digits

    import jax
    import jax.numpy as jnp

    digits = load_digits()
    x = jnp.asarray(digits.images / 16.0, jnp.float32)  # (1797, 8, 8)
    if math.prod(image) != 64:
        x = jax.image.resize(x, (x.shape[0], 28, 28), "bilinear")
    x = x.reshape(x.shape[0], *image)
    y = jnp.asarray(digits.target, jnp.int32)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_train = int(round(train_fraction * x.shape[0]))
    train, test = order[:n_train], order[n_train:]
    return x[train], y[train], x[test], y[test]


def throughput(name: str, cfg: dict) -> dict:
    """S3HMC sampling the network ``name`` on real images, as a user runs it: draws
    per second.

    The digits (:func:`digits_for`), a MAP start (:func:`numpyro_s3hmc.bnn.map_init`,
    ``--map-steps`` Adam steps), then ``MCMC.warmup`` and ``MCMC.run`` of S3HMC
    centred with the static length (as the BNN examples ran it when the GPU row was
    measured), with no cap on its trajectories but the
    kernel's default, one chain. Reports the sampling phase's draws per second,
    gradients per draw and seconds per gradient (compilation excluded), the
    compile time, the warmup's seconds, the test accuracy of the posterior
    predictive and the precisions' largest split R-hat (one chain).
    """
    import numpy as np

    import jax

    from numpyro.diagnostics import split_gelman_rubin

    from numpyro_s3hmc import S3HMC
    from numpyro_s3hmc.bnn import hierarchical_bnn, map_init, predict

    arch, hidden, image = SIZES[name]
    x, y, x_test, y_test = digits_for(image)
    model = hierarchical_bnn(build_module(arch, hidden), (1, *image), likelihood="classification")
    t0 = time.perf_counter()
    z0 = map_init(model, x, y, num_steps=cfg["map_steps"])
    jax.block_until_ready(z0)
    map_s = time.perf_counter() - t0
    kernel = S3HMC(model, coordinates="centred", trajectory="static")  # the GPU row's settings
    w, d = cfg["throughput_warmup"], cfg["throughput_draws"]
    r = _timed_mcmc(kernel, (x, y), w, d, "num_grad_evals", split=True, init_params=z0)
    mcmc = r.pop("mcmc")
    samples = mcmc.get_samples()
    probs = np.asarray(predict(model, samples, x_test)["probs"]).mean(0)
    # one chain: its split R-hat (numpyro's ESS of one antithetic chain can come out
    # negative; ArviZ is not needed elsewhere in this script)
    rhat = [float(split_gelman_rubin(np.asarray(samples[s])[None])) for s in model.precision_sites]
    return {
        "network": name,
        "throughput": True,
        "θ": sum(
            math.prod(v.shape[1:]) for k, v in samples.items() if k not in model.precision_sites
        ),
        "N train": int(x.shape[0]),
        "N test": int(x_test.shape[0]),
        "MAP (s)": map_s,
        "warmup": w,
        **r,
        "draws/s": d / r["sampling (s)"],
        "warmup (s)": r["wall (s)"] - r["sampling (s)"] - r["compile (s)"],
        "test accuracy": float(np.mean(probs.argmax(-1) == np.asarray(y_test))),
        "precisions max split R-hat": max(rhat),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "device": str(jax.devices()[0].device_kind),
    }


def run_size(name: str, cfg: dict, child: str = "--child") -> dict:
    """:func:`measure` (``child="--throughput-child"``: :func:`throughput`) in a
    fresh Python process."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cuda" if cfg["platform"] == "gpu" else "cpu"
    cmd = [sys.executable, str(Path(__file__).resolve()), child, name, json.dumps(cfg)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"{name}: the child process exited with {out.returncode}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process (s)"] = time.perf_counter() - start
    return row


def _g(v: float, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    return f"{v:,.{max(digits - 1 - mag, 0)}f}"


def _time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{_g(1e6 * seconds)} µs"
    if seconds < 1:
        return f"{_g(1e3 * seconds)} ms"
    return f"{_g(seconds)} s"


def tables(rows: list[dict], cfg: dict) -> str:
    """The markdown tables of :func:`measure`'s rows."""
    integrators = cfg["integrators"]
    gpu = cfg["platform"] == "gpu"
    lines = [
        "| network | θ | η | N | one gradient | "
        + " | ".join(f"{i} step / gradients" for i in integrators)
        + " | S3HMC in a chain, per gradient |",
        "|---|---|---|---|---|" + "---|" * len(integrators) + "---|",
    ]
    for r in rows:
        cells = []
        for i in integrators:
            c = f"{r[f'{i} step / gradients']:.2f}"
            cells.append(c if r[f"{i} finite"] else c + " (non-finite)")
        lines.append(
            f"| {r['network']} | {r['θ']:,} | {r['η']} | {r['N']} | {_time(r['gradient (s)'])} | "
            + " | ".join(cells)
            + f" | {_time(r['S3HMC in-run s/grad'])} |"
        )
    d1, d2 = cfg["draws"]
    mem = "peak device memory (MB)" if gpu else "peak RSS (MB)"
    lines += [
        "",
        f"| network | θ | compile, {d1} draws | compile, {d2} draws | {mem} | "
        + ("" if gpu else "peak − before the network (MB) | ")
        + "S3HMC transition's XLA buffers (MB) | bytes per θ | NUTS per gradient | "
        "NUTS grads/draw | NUTS per draw |",
        "|---|---|---|---|---|" + ("" if gpu else "---|") + "---|---|---|---|---|",
    ]
    for r in rows:
        c1, c2 = (run["compile (s)"] for run in r["S3HMC runs"])
        if gpu:
            used = r["peak device memory (MB)"]
            mem_cells = f"{_g(used)} | "
        else:
            used = r["peak RSS (MB)"] - r["RSS before the network (MB)"]
            mem_cells = f"{_g(r['peak RSS (MB)'])} | {_g(used)} | "
        buffers = r["transition buffers (MB)"]
        mem_cells += f"{_g(buffers)} | {_g(buffers * 2**20 / r['θ'])} | "
        nuts = r["NUTS"]
        if nuts is None:
            nuts_cells = f"skipped: about {_g(r['NUTS estimate (s)'], 2)} s | | "
        else:
            nuts_cells = (
                f"{_time(nuts['s/grad'])} | {_g(nuts['grads/draw'])} | {_time(nuts['s/draw'])}"
            )
        lines.append(
            f"| {r['network']} | {r['θ']:,} | {_g(c1)} s | {_g(c2)} s | {mem_cells}{nuts_cells} |"
        )
    return "\n".join(lines)


def findings(rows: list[dict], cfg: dict) -> str:
    """The issue's targets, read off the rows: gradients per step from 10⁴
    parameters up, memory against θ (least squares), compile against draws."""
    import numpy as np

    lines = []
    big = [r for r in rows if r["θ"] >= 10_000]
    for i in cfg["integrators"]:
        if big:
            worst = max(r[f"{i} step / gradients"] for r in big)
            verdict = "yes" if worst <= 1.3 else "**no**"
            lines.append(
                f"- {i}: at most {worst:.2f} gradients per step from 10^4 parameters up "
                f"(target ≤ 1.3: {verdict})."
            )
    theta = np.array([r["θ"] for r in rows], float)
    memories = {"S3HMC transition's XLA buffers": [r["transition buffers (MB)"] for r in rows]}
    if cfg["platform"] == "gpu":
        memories["peak device memory"] = [r["peak device memory (MB)"] for r in rows]
    else:
        memories["peak RSS − before the network"] = [
            r["peak RSS (MB)"] - r["RSS before the network (MB)"] for r in rows
        ]
    for what, used in memories.items():
        used = np.asarray(used, float)
        if len(rows) < 3 or not np.all(np.isfinite(used)):
            continue
        slope, intercept = np.polyfit(theta, used, 1)
        resid = used - (slope * theta + intercept)
        r2 = 1 - resid.var() / used.var() if used.var() > 0 else float("nan")
        lines.append(
            f"- {what}: least-squares line {_g(intercept)} MB + {_g(slope * 2**20)} bytes × θ "
            f"(R² {r2:.3f}, largest residual {_g(np.abs(resid).max())} MB)."
        )
    growth = [r["S3HMC runs"][1]["compile (s)"] / r["S3HMC runs"][0]["compile (s)"] for r in rows]
    d1, d2 = cfg["draws"]
    lines.append(
        f"- compile with {d2} draws ÷ with {d1}: {min(growth):.2f}–{max(growth):.2f} "
        "(1 = not growing with the draws)."
    )
    return "\n".join(lines)


def throughput_table(rows: list[dict]) -> str:
    """The markdown table of :func:`throughput`'s rows."""
    lines = [
        "| network | θ | N train | MAP start | compile | warmup | draws | grads/draw | "
        "per gradient | draws/s | divergences | test accuracy | precisions' split R-hat |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['θ']:,} | {r['N train']} | {_time(r['MAP (s)'])} | "
            f"{_time(r['compile (s)'])} | {r['warmup']} in {_time(r['warmup (s)'])} | "
            f"{r['draws']} | {_g(r['grads/draw'])} | {_time(r['s/grad'])} | "
            f"{_g(r['draws/s'])} | {r['divergences']} | {r['test accuracy']:.3f} | "
            f"{r['precisions max split R-hat']:.3f} |"
        )
    return "\n".join(lines)


def section(rows: list[dict], cfg: dict, command: str) -> str:
    scale = sorted((r for r in rows if not r.get("throughput")), key=lambda r: r["θ"])
    runs = [r for r in rows if r.get("throughput")]
    machine = "2-core CPU" if cfg["platform"] == "cpu" else rows[0]["device"]
    date = datetime.date.today().isoformat()
    python = rows[0].get("python", platform.python_version())
    parts = [f"`{command}`, {date}, {machine}, jax {rows[0]['jax']}, Python {python}, float32."]
    if scale:
        w, (d1, d2) = cfg["num_warmup"], cfg["draws"]
        head = (
            f"Costs: synthetic inputs ({scale[0]['N']} standard-normal "
            "images, uniform labels over 10 classes). Each network in its own "
            "process. `one gradient` and `step / gradients`: jitted `lax.fori_loop`s as in "
            f"`benchmarks/overhead.py` (at least {MIN_ITERATIONS} iterations a call), called in "
            f"turn for {cfg['repeats']} rounds; `one "
            "gradient` is the fastest round, `step / gradients` the median over the rounds of "
            "the step's time over the same round's gradients. `compile`: what JAX "
            "reports tracing, lowering and compiling during one `MCMC.run` of S3HMC's defaults "
            f"with trajectories capped at {cfg['max_steps']} steps, {w} warmup + {d1} or {d2} "
            "draws, a fresh `MCMC` and kernel each, after the loops above compiled in the same "
            "process. `in a chain`: S3HMC's sampling-phase transitions from the end of that run "
            "(momenta, trajectory, Metropolis test) in a jitted loop, per gradient. "
            "NUTS: NumPyro's defaults, the same warmup and draws, sampling phase; skipped where "
            f"the gradient time predicts more than {_g(cfg['nuts_budget'], 2)} s at "
            f"{NUTS_GRADS_PER_DRAW} gradients a draw."
        )
        parts += [head, tables(scale, cfg), findings(scale, cfg)]
    if runs:
        parts += [
            "Sampling as a user runs it (`--throughput`): scikit-learn's digits, 28×28 "
            "(bilinearly upsampled) for the 784-input networks, a 70% training split, a MAP "
            "start, S3HMC centred with the static length (as the BNN examples ran it then) "
            "with its default trajectory cap, one chain; `draws/s`, `grads/draw` and `per gradient` are the sampling "
            "phase's, compilation excluded; the accuracy is the posterior predictive's on the "
            "other 30%; R-hat is the largest split R-hat of the precisions on the one chain.",
            throughput_table(runs),
        ]
    return "\n\n".join(parts)


def write_results(text: str, path: Path = HERE / "results.md", where: str = "cpu") -> None:
    """Put ``text`` between the BNN-scale markers of ``path`` for the platform
    ``where``, adding the section once."""
    old = path.read_text()
    start, end = MARKERS[where]
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + f"\n\n{HEADINGS[where]}\n\n" + block + "\n"
    path.write_text(new)


def config(args: argparse.Namespace) -> dict:
    from numpyro_s3hmc.integrators import INTEGRATORS

    quick = args.quick
    return {
        "platform": args.platform,
        "num_data": args.num_data,
        "repeats": 2 if quick else args.repeats,
        "loop_seconds": 0.02 if quick else args.loop_seconds,
        "integrators": list(args.integrators or (["splitting"] if quick else INTEGRATORS)),
        "max_steps": 2 if quick else args.max_steps,
        "num_warmup": 2 if quick else args.num_warmup,
        "draws": [2, 4] if quick else list(args.draws),
        "nuts_budget": 10.0 if quick else args.nuts_budget,
        "map_steps": 20 if quick else args.map_steps,
        "throughput_warmup": 4 if quick else args.throughput_warmup,
        "throughput_draws": 4 if quick else args.throughput_draws,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--throughput-child"]):
        child = measure if argv[0] == "--child" else throughput
        print(json.dumps(child(argv[1], json.loads(argv[2]))))
        return []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=None)
    parser.add_argument("--quick", action="store_true", help="the two smallest, tiny repeats")
    parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--num-data", type=int, default=256, help="images in the batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-seconds", type=float, default=0.3)
    parser.add_argument("--integrators", nargs="+", default=None)
    parser.add_argument("--max-steps", type=int, default=8, help="cap on a trajectory's steps")
    parser.add_argument("--num-warmup", type=int, default=5)
    parser.add_argument("--draws", type=int, nargs=2, default=(10, 30))
    parser.add_argument("--nuts-budget", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--throughput",
        nargs="*",
        choices=list(SIZES),
        default=[],
        help="then sample these networks on the digits as a user would: draws per second",
    )
    parser.add_argument("--map-steps", type=int, default=1000)
    parser.add_argument("--throughput-warmup", type=int, default=200)
    parser.add_argument("--throughput-draws", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--write", action="store_true", help="update benchmarks/results.md")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", default=None, help="tabulate saved rows, run nothing"
    )
    args = parser.parse_args(argv)
    cfg = config(args)
    sizes = args.sizes or (list(QUICK) if args.quick else list(SIZES))
    if args.sizes == []:
        sizes = []  # "--sizes" with no name: no cost rows (e.g. with --throughput)
    rows = []
    for path in args.from_json or []:
        rows += [
            r
            for r in json.loads(path.read_text())
            if not args.sizes or r["network"] in sizes or r.get("throughput")
        ]
    todo = [] if args.from_json else [(n, "--child") for n in sizes]
    todo += [] if args.from_json else [(n, "--throughput-child") for n in args.throughput]
    for name, child in todo:
        rows.append(run_size(name, cfg, child))
        print(f"{name}: {rows[-1]['process (s)']:.0f} s", file=sys.stderr, flush=True)
        if args.json:  # after every size, so that an interrupted run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    command = "python benchmarks/bnn_scale.py " + shlex.join(argv)
    text = section(rows, cfg, command.strip())
    print(text)
    if args.write:
        write_results(text, where=cfg["platform"])
    return rows


if __name__ == "__main__":
    main()
