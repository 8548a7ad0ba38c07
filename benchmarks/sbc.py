"""Simulation-based calibration of S3HMC (Talts et al. 2018).

For each model: draw R parameter sets from the prior, simulate a data set from
each, run S3HMC on every data set (all replicas in one vmapped, jitted loop),
keep L thinned posterior draws per replica and count how many fall below the
true value. For a correct sampler each rank is uniform on {0, ..., L}; a
chi-square test on B bins checks it, Bonferroni-corrected over the ranked
quantities of a (model, integrator, trajectory scheme) run.

Models:

- ``normal_gamma``: the conjugate Normal-Gamma model of tests/test_exact.py;
- ``hierarchical``: a regression with group intercepts and slopes around a
  common mean, a Gamma precision for the group coefficients and one Gamma noise
  precision per group;
- ``scale_location``: eight schools' shape with six groups, a HalfNormal scale
  hyperprior and a location parent (μ ~ N(0, 2), τ ~ HalfNormal(1),
  θ_j ~ N(μ, τ), y_j ~ N(θ_j, σ_j)): the coupled metric's case;
- ``bnn``: a [1, 4, 1] tanh network with a Gamma precision per layer and an
  output precision; its parameters are ranked only through quantities that the
  network's sign and permutation symmetries leave unchanged (the output bias,
  the prediction at x = 0, the squared norm of the first layer's weights).

A deliberately wrong sampler (the ½ log|G_θ(η)| term dropped from the
Metropolis-Hastings energy, the kind of slip the paper's eq. 5 makes) is run
too, to show the test can fail.

    python benchmarks/sbc.py                      # static trajectories: sbc.md, sbc.png
    python benchmarks/sbc.py --models normal_gamma --integrators splitting
    python benchmarks/sbc.py --trajectories nuts --no-wrong --name sbc_nuts
"""

import argparse
import contextlib
import inspect
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import stats

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import Predictive

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc import kernel as kernel_module
from numpyro_s3hmc.integrators import INTEGRATORS
from numpyro_s3hmc.metrics import hyper_kinetic_energy, param_logdet_and_solve
from numpyro_s3hmc.trajectory import TRAJECTORIES

HERE = Path(__file__).parent

# --- models -------------------------------------------------------------------

M0, K0, A0, B0, N_NG = 1.0, 0.5, 2.0, 2.0, 10


def normal_gamma(n=N_NG, y=None):
    tau = numpyro.sample("tau", dist.Gamma(A0, B0))
    mu = numpyro.sample("mu", dist.Normal(M0, 1.0 / jnp.sqrt(K0 * tau)))
    numpyro.sample("y", dist.Normal(mu, 1.0 / jnp.sqrt(tau)).expand([n]), obs=y)


J, N_PER_GROUP = 4, 8
X_H = np.linspace(-1.0, 1.0, N_PER_GROUP)


def hierarchical(x=X_H, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]))
    tau_b = numpyro.sample("tau_b", dist.Gamma(3.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(mu, 1.0 / jnp.sqrt(tau_b)).expand([J, 2]))
    tau_y = numpyro.sample("tau_y", dist.Gamma(3.0, 1.0).expand([J]))
    loc = beta[:, :1] + beta[:, 1:] * x  # (J, N_PER_GROUP)
    numpyro.sample("y", dist.Normal(loc, 1.0 / jnp.sqrt(tau_y)[:, None]), obs=y)


SIGMA_SL = np.array([0.5, 1.0, 2.0, 0.5, 1.0, 2.0])


def scale_location(sigma=SIGMA_SL, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("J", sigma.size):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


H_BNN, N_BNN = 4, 12
X_BNN = np.linspace(-2.0, 2.0, N_BNN)


def _bnn_forward(w1, b1, w2, b2, x):
    hidden = jnp.tanh(x[:, None] * w1 + b1)  # (N, H)
    return hidden @ w2 + b2


def bnn(x=X_BNN, y=None):
    tau_1 = numpyro.sample("tau_1", dist.Gamma(3.0, 1.0))  # layer 1: weights and biases
    tau_2 = numpyro.sample("tau_2", dist.Gamma(3.0, 1.0))  # layer 2
    tau_y = numpyro.sample("tau_y", dist.Gamma(3.0, 0.5))  # output (noise) precision
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0 / jnp.sqrt(tau_1)).expand([H_BNN]))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0 / jnp.sqrt(tau_1)).expand([H_BNN]))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0 / jnp.sqrt(tau_2)).expand([H_BNN]))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0 / jnp.sqrt(tau_2)))
    loc = _bnn_forward(w1, b1, w2, b2, jnp.asarray(x))
    numpyro.sample("y", dist.Normal(loc, 1.0 / jnp.sqrt(tau_y)), obs=y)


@dataclass(frozen=True)
class SBCModel:
    model: callable
    args: tuple  # fixed model arguments, before y
    quantities: callable  # dict of constrained draws (leading axes any) -> dict of scalars


def _ng_quantities(s):
    return {"tau": s["tau"], "mu": s["mu"]}


def _hier_quantities(s):
    q = {"tau_b": s["tau_b"]}
    q.update({f"tau_y[{j}]": s["tau_y"][..., j] for j in range(J)})
    q.update({"mu[0]": s["mu"][..., 0], "beta[0,0]": s["beta"][..., 0, 0]})
    q["beta[3,1]"] = s["beta"][..., 3, 1]
    return q


def _sl_quantities(s):
    q = {"tau": s["tau"], "mu": s["mu"]}
    q.update({f"theta[{j}]": s["theta"][..., j] for j in (0, 2)})
    return q


def _bnn_quantities(s):
    zero = np.tanh(s["b1"]) * s["w2"]  # hidden activations at x = 0, times w2
    return {
        "tau_1": s["tau_1"],
        "tau_2": s["tau_2"],
        "tau_y": s["tau_y"],
        "b2": s["b2"],
        "f(0)": zero.sum(-1) + s["b2"],
        "|w1|^2": (s["w1"] ** 2).sum(-1),
    }


MODELS = {
    "normal_gamma": SBCModel(normal_gamma, (N_NG,), _ng_quantities),
    "hierarchical": SBCModel(hierarchical, (X_H,), _hier_quantities),
    "scale_location": SBCModel(scale_location, (SIGMA_SL,), _sl_quantities),
    "bnn": SBCModel(bnn, (X_BNN,), _bnn_quantities),
}

# --- the run ------------------------------------------------------------------


def _state_axes(state):
    """vmap axes of an S3HMCState: every field batched except the shared iteration i.

    With ``i`` unbatched, the kernel's ``lax.cond`` on the warmup phase stays a
    real branch instead of both branches under ``select``.
    """
    return type(state)(*([None] + [0] * (len(state) - 1)))


def no_logdet_hamiltonian(metric, potential_energy, eta, r_theta, r_eta):
    """A wrong H for the Metropolis-Hastings test: ½ log|G_θ(η)| left out."""
    _, velocity = param_logdet_and_solve(metric, eta, r_theta)
    h = potential_energy + 0.5 * jnp.dot(r_theta, velocity) + hyper_kinetic_energy(metric, r_eta)
    return h, velocity, r_eta / metric.hyper_precision


def run_sbc(
    name,
    integrator,
    *,
    num_replicas=200,
    num_draws=99,
    thin=5,
    num_warmup=300,
    seed=0,
    wrong=False,
    **kernel_kwargs,
):
    """Ranks of every quantity of model ``name`` over ``num_replicas`` prior draws.

    Returns a dict: ``ranks`` {quantity: int array (R,)} in 0..num_draws,
    ``divergences`` (per replica, after warmup), ``accept`` (mean acceptance
    after warmup), ``ess_ratio`` {quantity: median over replicas of ESS/L of the
    thinned draws}, ``seconds``.
    """
    spec = MODELS[name]
    key_prior, key_init, key_run = jax.random.split(jax.random.PRNGKey(seed), 3)
    prior = Predictive(spec.model, num_samples=num_replicas)(key_prior, *spec.args)
    ys = prior.pop("y")
    truth = {k: np.asarray(v) for k, v in spec.quantities(prior).items()}

    # centred: the integrators' semi-separable geometry is what is calibrated here (with
    # coordinates="auto" a prior-dominated group would be non-centred, its hyperparameter
    # a plain parameter, and the one decision taken on replica 0 would serve them all)
    kernel_kwargs.setdefault("coordinates", "centred")
    kernel = S3HMC(spec.model, integrator=integrator, **kernel_kwargs)
    # sets up the partition and the compiled pieces on concrete data (replica 0)
    state0 = kernel.init(key_init, num_warmup, model_args=(*spec.args, ys[0]))
    hyper = kernel.partition.hyper
    axes = _state_axes(state0)

    def init_one(key, y):
        key_z, key_chain = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(state0.z)
        keys = jax.random.split(key_z, len(leaves))
        z = jax.tree.unflatten(
            treedef,
            [
                jax.random.uniform(k, jnp.shape(v), jnp.result_type(v), -2.0, 2.0)
                for k, v in zip(keys, leaves)
            ],
        )  # init_to_uniform
        return kernel._init_chain(z, key_chain, (*spec.args, y), {})

    def step(state, y):
        return kernel._sample_chain(state, (*spec.args, y), {})

    init_all = jax.vmap(init_one, out_axes=axes)
    step_all = jax.vmap(step, in_axes=(axes, 0), out_axes=axes)

    def constrained(z):
        return {k: jnp.exp(v) if k in hyper else v for k, v in z.items()}

    @jax.jit
    def run(keys, ys):
        state = init_all(keys, ys)
        state = jax.lax.fori_loop(0, num_warmup, lambda _, s: step_all(s, ys), state)

        def block(state, _):
            def inner(carry, _):
                s, div, acc = carry
                s = step_all(s, ys)
                return (s, div + s.diverging, acc + s.accept_prob), None

            zero = jnp.zeros(num_replicas)
            (state, div, acc), _ = jax.lax.scan(
                inner, (state, zero.astype(jnp.int32), zero), None, length=thin
            )
            return state, (constrained(state.z), div, acc)

        _, (draws, div, acc) = jax.lax.scan(block, state, None, length=num_draws)
        return draws, div.sum(0), acc.sum(0) / (num_draws * thin)

    keys = jax.random.split(key_run, num_replicas)
    patch = (
        mock.patch.object(kernel_module, "hamiltonian_and_velocity", no_logdet_hamiltonian)
        if wrong
        else contextlib.nullcontext()
    )
    t0 = time.perf_counter()
    with patch:
        draws, div, acc = jax.block_until_ready(run(keys, ys))
    seconds = time.perf_counter() - t0
    # draws: (L, R, ...) -> (R, L, ...)
    draws = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in draws.items()}
    post = {k: np.asarray(v) for k, v in spec.quantities(draws).items()}
    ranks = {k: (post[k] < truth[k][:, None]).sum(1) for k in truth}
    return {
        "ranks": ranks,
        "divergences": np.asarray(div),
        "accept": np.asarray(acc),
        "ess_ratio": {k: _median_ess_ratio(post[k]) for k in post},
        "seconds": seconds,
    }


def _median_ess_ratio(draws):
    """Median over replicas of ESS / L of the thinned draws (1: independent)."""
    import arviz as az

    ess = [float(az.ess(d[None, :], method="bulk")) for d in draws]
    return float(np.median(ess)) / draws.shape[1]


def chi_square(ranks, num_draws=99, bins=10):
    """Chi-square p-value of the rank histogram against the uniform on 0..L."""
    edges = np.linspace(0, num_draws + 1, bins + 1)
    counts, _ = np.histogram(ranks, bins=edges)
    return float(stats.chisquare(counts).pvalue), counts


# --- report -------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--integrators", nargs="+", default=list(INTEGRATORS))
    parser.add_argument("--trajectories", nargs="+", default=["static"], choices=TRAJECTORIES)
    parser.add_argument("--num-replicas", type=int, default=400)
    parser.add_argument("--bnn-replicas", type=int, default=200)
    parser.add_argument("--num-draws", type=int, default=99)
    parser.add_argument("--thin", type=int, default=5)
    parser.add_argument("--num-warmup", type=int, default=300)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-wrong", action="store_true", help="skip the wrong sampler")
    parser.add_argument(
        "--param-metric", default=None, help="S3HMC's param_metric (default: the kernel's)"
    )
    parser.add_argument("--output-dir", type=Path, default=HERE)
    parser.add_argument("--json", type=Path, default=None, help="also write the ranks here")
    parser.add_argument(
        "--name", default="sbc", help="stem of the report and figure (sbc.md, sbc.png)"
    )
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    version = _kernel_version()  # before the package can change under a long run

    kernel_kwargs = {} if args.param_metric is None else {"param_metric": args.param_metric}
    runs = [
        (m, i, t, False) for m in args.models for i in args.integrators for t in args.trajectories
    ]
    if not args.no_wrong:
        runs.append(("hierarchical", "splitting", "static", True))
    results = []
    for model, integrator, trajectory, wrong in runs:
        replicas = args.bnn_replicas if model == "bnn" else args.num_replicas
        out = run_sbc(
            model,
            integrator,
            num_replicas=replicas,
            num_draws=args.num_draws,
            thin=args.thin,
            num_warmup=args.num_warmup,
            seed=args.seed,
            wrong=wrong,
            trajectory=trajectory,
            **kernel_kwargs,
        )
        label = integrator + ("" if trajectory == "static" else f", {trajectory}")
        label += " (wrong: no ½log|G|)" if wrong else ""
        m = len(out["ranks"])
        rows = []
        for q, r in out["ranks"].items():
            p, counts = chi_square(r, args.num_draws, args.bins)
            rows.append(
                {
                    "quantity": q,
                    "p": p,
                    "counts": counts.tolist(),
                    "ess_ratio": out["ess_ratio"][q],
                }
            )
        min_p = min(r["p"] for r in rows)
        passed = min_p > args.alpha / m
        results.append(
            {
                "model": model,
                "integrator": label,
                "wrong": wrong,
                "replicas": replicas,
                "rows": rows,
                "ranks": {q: r.tolist() for q, r in out["ranks"].items()},
                "min_p": min_p,
                "passed": passed,
                "divergences": int(out["divergences"].sum()),
                "replicas_with_divergences": int((out["divergences"] > 0).sum()),
                "accept": float(np.mean(out["accept"])),
                "seconds": out["seconds"],
            }
        )
        print(
            f"{model:<13} {label:<28} R={replicas} min p={min_p:.3g} "
            f"{'pass' if passed else 'FAIL'} div={results[-1]['divergences']} "
            f"{out['seconds']:.0f}s",
            flush=True,
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    plot(results, args, args.output_dir / f"{args.name}.png")
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/sbc.py", *argv])
    write_markdown(results, args, command, time.perf_counter() - t_start, version)
    return results


def _kernel_version():
    """The commit of the numpyro_s3hmc package that ran, marked if it had local edits."""
    import numpyro_s3hmc

    root = Path(numpyro_s3hmc.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "."], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}" or "unknown"


def _p(p):
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def write_markdown(results, args, command, total_seconds, version):
    metric = args.param_metric or inspect.signature(S3HMC).parameters["param_metric"].default
    lines = [
        "# Simulation-based calibration",
        "",
        f"Produced by `{command}` ({total_seconds / 60:.1f} min on a shared 2-core CPU,"
        f" compilation included), with the kernel of commit {version}"
        f" (`param_metric={metric!r}`, every other setting the default). Method and"
        " models: the docstring of [`sbc.py`](sbc.py).",
        "",
        f"Per replica: {args.num_warmup} warmup iterations, then {args.num_draws}"
        f" draws kept, every {args.thin}th of {args.num_draws * args.thin}; ranks in"
        f" 0..{args.num_draws}, {args.bins} bins, chi-square with {args.bins - 1}"
        f" degrees of freedom. A (model, integrator) pair passes when its smallest"
        f" p-value exceeds {args.alpha:g}/m, m the number of ranked quantities"
        " (Bonferroni). `ESS/L` is the median over replicas of the bulk ESS of the"
        " L thinned draws divided by L: near 1, the draws are near-independent,"
        " as the rank statistic assumes.",
        "",
        f"![rank histograms]({args.name}.png)",
        "",
        "| model | integrator | replicas | min p | verdict | divergences (replicas) |"
        " mean accept | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['integrator']} | {r['replicas']} | {_p(r['min_p'])} |"
            f" {'pass' if r['passed'] else '**reject**'} |"
            f" {r['divergences']} ({r['replicas_with_divergences']}) |"
            f" {r['accept']:.2f} | {r['seconds']:.0f} |"
        )
    lines += ["", "## p-values by quantity", ""]
    for r in results:
        lines.append(f"**{r['model']}, {r['integrator']}** (R = {r['replicas']}):")
        lines.append("")
        lines.append("| quantity | p | ESS/L | bin counts |")
        lines.append("|---|---|---|---|")
        for row in r["rows"]:
            counts = " ".join(str(c) for c in row["counts"])
            lines.append(
                f"| {row['quantity']} | {_p(row['p'])} | {row['ess_ratio']:.2f} | {counts} |"
            )
        lines.append("")
    lines += NOTES
    (args.output_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")


NOTES = [
    "## Notes",
    "",
    "- Every integrator of a model sees the same prior draws and data sets (one seed),"
    " so their histograms are correlated: a bump shared by all three belongs to the"
    " replica set, not to an integrator. The smallest p-value of a correct sampler,"
    " 0.0055 for τ in the Normal-Gamma model with the splitting integrator, is such a"
    " bump (bins 3-4, in all three integrators). Rerun with"
    " `run_sbc('normal_gamma', 'splitting', num_replicas=1000, ...)`: 1,000 warmup"
    " iterations and thinning 10 give p = 0.11 (τ) and 0.90 (μ) on the same replicas;"
    " seeds 5 and 7 give p = 0.52 and 0.23 for τ, 0.035 and 0.36 for μ.",
    "- `implicit_alba` diverges in about 1.3% of the Normal-Gamma transitions: the"
    " implicit τ update has no real root once the log-step h·r_η/(2c) passes"
    " (√2 − 1)/2 (README, How it works). Those transitions are rejected, and the ranks"
    " stay uniform. The explicit integrators diverge a handful of times in 10⁶"
    " transitions on the hierarchical model and in a few BNN replicas with extreme"
    " prior draws.",
    "- BNN parameters have sign and permutation symmetries that a chain need not"
    " cross; only invariant quantities are ranked (the precisions, the output bias,"
    " the prediction at x = 0, the squared norm of the first layer's weights).",
    "- The wrong sampler drops ½ log|G_θ(η)| from the energy of the Metropolis-Hastings"
    " test only (its trajectories are the right ones). Its chain then targets"
    " p(θ, τ | y)·|G_θ(τ)|^½, which favours large τ_b (|G_θ|^½ grows as τ_b^4 in the"
    " hierarchical model, whose τ_b scales 8 coefficients): the test rejects it, with"
    " the ranks of τ_b piled at the low end (the draws too large).",
    "- No calibration failure was found in the kernel. The slow tests"
    " (`python -m pytest tests/test_sbc.py -m slow`) repeat the correct-sampler runs"
    " with another seed and 400 (BNN 200) replicas, and the rejection of the wrong"
    " sampler.",
]


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows = len(results)
    ncols = max(len(r["rows"]) for r in results)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.9 * ncols, 1.5 * nrows), squeeze=False, sharex=True
    )
    edges = np.linspace(0, args.num_draws + 1, args.bins + 1)
    for i, res in enumerate(results):
        expected = res["replicas"] / args.bins
        band = stats.binom.ppf([0.005, 0.995], res["replicas"], 1 / args.bins)
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(res["rows"]):
                ax.axis("off")
                continue
            row = res["rows"][j]
            ax.axhspan(*band, color="0.85")
            ax.axhline(expected, color="0.4", lw=0.8)
            ax.stairs(row["counts"], edges, fill=True, color="C3" if res["wrong"] else "C0")
            ax.set_title(f"{row['quantity']}  p={row['p']:.2g}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{res['model']}\n{res['integrator']}", fontsize=6)
    fig.suptitle("SBC rank histograms (grey: 99% band of a uniform bin count)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
