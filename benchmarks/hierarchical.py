"""Hierarchical models with location parents: S3HMC against NUTS, centred and not.

Models (all written centred, as a user writes them):

- **eight schools**: μ ~ N(0, 5), τ ~ HalfCauchy(5), θ_j ~ N(μ, τ), y_j ~ N(θ_j, σ_j)
  (Rubin 1981; the classic funnel with a location parent);
- **sweep n**: the data-informativeness sweep, J = 8 groups, μ ~ N(0, 5),
  τ ~ HalfNormal(5), θ_j ~ N(μ, τ) and n observations per group, y_ji ~ N(θ_j, 1),
  drawn once from the prior predictive at τ = 1 (seeded), n = 0, 1, 10, 100, 1,000:
  the prior dominates at small n (where centred NUTS fails) and the data at large
  n (where non-centred NUTS fails);
- **group regression**: 20 groups with 3 group-level predictors x_g,
  β ~ N(0, 1)³, τ ~ HalfNormal(1), a_g ~ N(x_gᵀβ, τ), σ ~ HalfNormal(1),
  5 observations per group y_gi ~ N(a_g, σ): β is a location parent of every a_g.

Samplers, same key and budget: S3HMC with its defaults (the coupled metric and
``coordinates="auto"``: centred or non-centred per group, chosen by a pilot run; the
choice is recorded), S3HMC with ``coordinates="centred"`` (the default before
2026-12-03), S3HMC centred with ``coupled_metric=False`` (the diagonal metric), NumPyro
NUTS on the centred model, and NUTS with ``LocScaleReparam(0)`` on the group site
(the one line a NumPyro user adds). Scores, by :func:`numpyro_s3hmc.compare_samplers`
on the centred model's sites: the smallest bulk ESS over every latent element per
1,000 sampling-phase gradients, and the bulk ESS of τ per 1,000, median over seeds.

    python benchmarks/hierarchical.py [--quick] [--seeds 0 1 2] [--models ...]
        [--samplers "S3HMC,NUTS centred"] [--write]   # runs are merged into the saved ones
    python benchmarks/hierarchical.py --report   # table and figure from hierarchical.json

``--write`` puts the table in ``benchmarks/results.md`` and the sweep figure in
``docs/sweep.png``. 4 chains × 1000 + 1000 by default (about 25 minutes on 2 cores).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import numpyro
import numpyro.distributions as dist

HERE = Path(__file__).resolve().parent
START, END = "<!-- hierarchical:start -->", "<!-- hierarchical:end -->"
SAMPLERS = (
    "S3HMC",
    "S3HMC centred",
    "S3HMC diagonal",
    "NUTS centred",
    "NUTS + LocScaleReparam(0)",
)
SWEEP = (0, 1, 10, 100, 1000)
MODELS = ("eight schools", *(f"sweep n={n}" for n in SWEEP), "group regression")

Y8 = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
S8 = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools():
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", 8):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, S8), obs=Y8)


def sweep(n, num_groups=8, seed=0):
    rng = np.random.default_rng(seed)
    theta_true = rng.normal(0.0, 5.0) + rng.normal(size=num_groups)
    y = theta_true[:, None] + rng.normal(size=(num_groups, n))

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfNormal(5.0))
        with numpyro.plate("J", num_groups):
            theta = numpyro.sample("theta", dist.Normal(mu, tau))
        if n:
            numpyro.sample("y", dist.Normal(theta[:, None], 1.0), obs=y)

    return model


def group_regression(num_groups=20, per_group=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_groups, 3))
    a_true = x @ np.array([1.0, -0.5, 0.25]) + 0.3 * rng.normal(size=num_groups)
    y = a_true[:, None] + rng.normal(size=(num_groups, per_group))

    def model():
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("G", num_groups):
            a = numpyro.sample("theta", dist.Normal(x @ beta, tau))
        numpyro.sample("y", dist.Normal(a[:, None], sigma), obs=y)

    return model


def model_of(name):
    if name == "eight schools":
        return eight_schools
    if name.startswith("sweep n="):
        return sweep(int(name.split("=")[1]))
    return group_regression()


def kernels(name):
    from numpyro.infer import NUTS
    from numpyro.infer.reparam import LocScaleReparam

    from numpyro_s3hmc import S3HMC

    model = model_of(name)
    return {
        "S3HMC": S3HMC(model),
        "S3HMC centred": S3HMC(model, coordinates="centred", trajectory="static"),
        "S3HMC diagonal": S3HMC(
            model, coupled_metric=False, coordinates="centred", trajectory="static"
        ),
        "NUTS centred": NUTS(model),
        "NUTS + LocScaleReparam(0)": NUTS(
            numpyro.handlers.reparam(model, {"theta": LocScaleReparam(0)})
        ),
    }


def chosen_samplers(samplers):
    """The samplers this run was asked for (``--samplers``), in the suite's order."""
    chosen = os.environ.get("SUITE_SAMPLERS")
    return samplers if chosen is None else [s for s in samplers if s in chosen.split(",")]


def run_cell(name, seed, num_chains, num_warmup, num_samples, model=None, kernels_of=None):
    """Every sampler on one model and seed: {sampler: scores}, scored on the model's
    latent sites (a reparameterised model records them as deterministic)."""
    import jax

    from numpyro.handlers import seed as seeded
    from numpyro.handlers import trace

    from numpyro_s3hmc import compare_samplers

    model = model_of(name) if model is None else model
    tr = trace(seeded(model, 0)).get_trace()
    sites = [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    chosen = (kernels_of or kernels)(name)
    chosen = {k: chosen[k] for k in chosen_samplers(list(chosen))}
    table, _ = compare_samplers(
        chosen,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        rng_key=jax.random.PRNGKey(seed),
        chain_method="sequential",
        progress_bar=False,
        var_names=sites,
    )
    grads = table["grad evals"].astype(float)
    tau = "ESS bulk tau" in table.columns
    return {
        sampler: {
            "ess_per_1k": float(table.loc[sampler, "ESS/1k grads"]),
            "tau_per_1k": float(1000 * table.loc[sampler, "ESS bulk tau"] / grads[sampler])
            if tau
            else float("nan"),
            "rhat": float(table.loc[sampler, "max R-hat"]),
            "divergences": int(table.loc[sampler, "divergences"]),
            "grads_per_draw": float(table.loc[sampler, "grads/draw"]),
            "coordinates": getattr(chosen[sampler], "coordinates", None),
            # the coordinates pilot's statistic per candidate site
            "coordinates_pilot": getattr(chosen[sampler], "coordinates_pilot", None),
            "chains_on_the_tree": table.attrs["tree"].get(sampler),
        }
        for sampler in table.index
    }


def run(models, seeds, num_chains, num_warmup, num_samples, script=__file__):
    """{(model, sampler): [row per seed]}, each (model, seed) in its own process
    (XLA's CPU backend runs out of code memory after many compilations in one):
    ``script --cell name seed chains warmup samples`` prints the cell's JSON."""
    cells = {}
    for name in models:
        for seed in seeds:
            t0 = time.time()
            args = [name, str(seed), str(num_chains), str(num_warmup), str(num_samples)]
            out = subprocess.run(
                [sys.executable, str(script), "--cell", *args],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            for sampler, row in result.items():
                cells.setdefault((name, sampler), []).append(row)
            summary = ", ".join(f"{s} {r['ess_per_1k']:.3g}" for s, r in result.items())
            print(f"{name}, seed {seed} ({time.time() - t0:.0f} s): {summary}", flush=True)
    return cells


def medians(cells, name, key="ess_per_1k", samplers=SAMPLERS):
    return {s: statistics.median(r[key] for r in cells[(name, s)]) for s in samplers}


def markdown(cells, models, seeds, command) -> str:
    lines = [
        f"Median over seeds {', '.join(map(str, seeds))} of the smallest bulk ESS over every"
        " latent element per 1,000 sampling-phase gradients (in brackets: τ's own); worst"
        " R-hat and total sampling-phase divergences over the seeds; for `S3HMC` (the"
        ' default, coordinates="auto"), the coordinates its pilot chose and how many chains'
        ' of all seeds chose the no-U-turn tree in warmup (trajectory="auto"). The last columns'
        " are S3HMC and S3HMC centred against the better NUTS parameterisation.",
        "",
        "| model | "
        + " | ".join(SAMPLERS)
        + " | S3HMC / better NUTS | S3HMC centred / better NUTS |",
        "|---|" + "---|" * (len(SAMPLERS) + 2),
    ]
    for name in models:
        med, tau = medians(cells, name), medians(cells, name, "tau_per_1k")
        cols = []
        for sampler in SAMPLERS:
            rows = cells[(name, sampler)]
            rhat = max(r["rhat"] for r in rows)
            div = sum(r["divergences"] for r in rows)
            coords = {str(r.get("coordinates")) for r in rows if r.get("coordinates")}
            note = f"; {', '.join(sorted(coords))}" if coords else ""
            trees = [r.get("chains_on_the_tree") for r in rows]
            if sampler == "S3HMC" and None not in trees:  # trajectory="auto"'s choice
                note += f"; {sum(trees)} chains on the tree"
            cols.append(
                f"{med[sampler]:.3g} ({tau[sampler]:.3g}); R-hat {rhat:.3f}, {div} div{note}"
            )
        best = max(med["NUTS centred"], med["NUTS + LocScaleReparam(0)"])
        lines.append(
            f"| {name} | "
            + " | ".join(cols)
            + f" | {med['S3HMC'] / best:.2f}× | {med['S3HMC centred'] / best:.2f}× |"
        )
    lines += ["", "Command:", "", f"    {command}"]
    return "\n".join(lines)


def figure(cells, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = np.array([max(n, 0.3) for n in SWEEP])
    for sampler, style in zip(SAMPLERS, ("o-", "D-", "o:", "s--", "^--"), strict=True):
        y = [medians(cells, f"sweep n={n}")[sampler] for n in SWEEP]
        ax.plot(x, np.maximum(y, 1e-2), style, label=sampler)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(n) for n in SWEEP])
    ax.set_xlabel("observations per group (0 = prior only)")
    ax.set_ylabel("min bulk ESS per 1,000 gradients")
    ax.set_title("Centred 8-group model: the prior dominates on the left, the data on the right")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_suite_args(argv, doc, models, write_help, samplers=None):
    """The flags every suite script shares; ``--quick`` is 2 chains × 300 + 300, one seed.
    With ``samplers``, ``--samplers a,b`` runs a subset of them; the child processes read
    it from ``SUITE_SAMPLERS`` (:func:`chosen_samplers`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if samplers is not None:
        parser.add_argument("--samplers", help=f"a comma-separated subset of {samplers}")
    parser.add_argument("--quick", action="store_true", help="2 chains × 300 + 300, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=models, default=list(models))
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help=write_help)
    args = parser.parse_args(argv)
    if getattr(args, "samplers", None):
        if not set(args.samplers.split(",")) <= set(samplers):
            parser.error(f"--samplers takes a comma-separated subset of {samplers}")
        os.environ["SUITE_SAMPLERS"] = args.samplers
    if args.quick:
        args.seeds, args.num_chains, args.num_warmup, args.num_samples = args.seeds[:1], 2, 300, 300
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:  # one (model, seed), in a child process
        name, seed, chains, warmup, samples = argv[1:]
        print(json.dumps(run_cell(name, int(seed), int(chains), int(warmup), int(samples))))
        return 0
    path = HERE / "hierarchical.json"
    if argv[:1] == ["--report"]:  # the table and figure of the saved runs
        saved = json.loads(path.read_text())
        cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
        seeds = list(range(len(next(iter(cells.values())))))
        args = parse_suite_args(["--seeds", *map(str, seeds), "--write"], __doc__, MODELS, "")
        command = "python benchmarks/hierarchical.py --write"
    else:
        args = parse_suite_args(argv, __doc__, MODELS, "update results.md and the figure", SAMPLERS)
        cells = run(args.models, args.seeds, args.num_chains, args.num_warmup, args.num_samples)
        command = shlex.join(["python", "benchmarks/hierarchical.py", *argv])
        # merged with the saved runs, so the suite can run in parts (--models, --samplers)
        saved = json.loads(path.read_text()) if path.exists() else {}
        saved.update({f"{m} | {s}": rows for (m, s), rows in cells.items()})
        if not args.quick:  # a quick run is a smoke test, not a measurement
            path.write_text(json.dumps(saved, indent=1))
        cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
    text = markdown(cells, args.models, args.seeds, command)
    print(text)
    if args.write and not args.quick:
        from families import write_results

        write_results(text, start=START, end=END, title="Hierarchical models: location parents")
        if all(f"sweep n={n}" in args.models for n in SWEEP):
            figure(cells, HERE.parent / "docs" / "sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
