"""Trajectory schemes: S3HMC's static length against its no-U-turn tree, beside NUTS.

Models (written centred, as a user writes them):

- **BNN sine, data 0 / data 1**: the paper's [1, 50, 1] tanh network on two draws of
  its sine data (``models.sine(seed=0)``, ``seed=1``), a Gamma precision per layer's
  weights and biases and for the noise; scored on the five log precisions (the
  weights are not identified: sign and permutation symmetries);
- **BNN diabetes, data 0 / data 1**: [10, 16, 1] tanh on 80% of scikit-learn's diabetes
  rows (two random subsets), priors as above; scored on the five log precisions;
- **funnel D-D**, D = 25, 50, 100, 200: τ ~ Gamma(2, 1), x ~ N(0, 1/√τ)ᴰ, prior only;
  scored on every latent; the report adds the slope of log(gradients per effective
  sample) against log D;
- **eight schools**: as in ``hierarchical.py``; scored on every latent;
- **latent GP**: the Poisson latent GP of ``ungoverned.py`` (LogNormal length scale,
  HalfNormal amplitude, 30 latent values with a MultivariateNormal prior), where the
  static length traps chains; non-centred: f = 1 + L z, z ~ N(0, I), L the kernel's
  Cholesky factor; scored on every latent.

Samplers, same key and budget: S3HMC in centred coordinates with ``trajectory="static"``
and with ``trajectory="nuts"``, and S3HMC's defaults (``coordinates="auto"``,
``trajectory="auto"``; the pilot's gradients are counted in warmup's); NumPyro NUTS on the centred model and on the non-centred one
(the hand-written non-centred network, or ``LocScaleReparam(0)``). Scores: the smallest
bulk ESS over the scored quantities per 1,000 sampling-phase gradients, the worst
split R-hat, divergences, and gradients per draw in warmup and in sampling, counted
separately; medians over the MCMC seeds.

    python benchmarks/trajectories.py [--quick] [--seeds 0 1 2] [--models ...] [--write]
        [--samplers "S3HMC auto,NUTS centred"]   # a subset, merged into the saved runs
    python benchmarks/trajectories.py --report   # table and figure from trajectories.json

``--write`` puts the table in ``benchmarks/results.md`` and the figure in
``docs/trajectories.png``; the JSON of every run is merged into
``benchmarks/trajectories.json``, so the suite can run in parts (``--models``).
4 chains × 1000 + 1000 on 2 cores: the BNN sine, the 50-D funnel, eight schools and the
latent GP took about 35 minutes with every sampler; the other three funnels 7 minutes
and BNN diabetes 19 minutes with three samplers (S3HMC auto and both NUTS).
"""

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import jax

import numpyro

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hierarchical  # noqa: E402
import models as suite  # noqa: E402

START, END = "<!-- trajectories:start -->", "<!-- trajectories:end -->"
SAMPLERS = ("S3HMC static", "S3HMC nuts", "S3HMC auto", "NUTS centred", "NUTS non-centred")
FUNNEL_DIMS = (25, 50, 100, 200)
MODELS = (
    "BNN sine, data 0",
    "BNN sine, data 1",
    "BNN diabetes, data 0",
    "BNN diabetes, data 1",
    *(f"funnel {d}-D" for d in FUNNEL_DIMS),
    "eight schools",
    "latent GP",
)
BNN_PRECISIONS = tuple(f"tau_{k}" for k in suite.LAYERS) + ("tau_y",)


def problem(name):
    """(centred model, non-centred model, model args, scored sites, positive sites)."""
    from numpyro.infer.reparam import LocScaleReparam

    if name.startswith("BNN sine"):
        args = suite.sine(seed=int(name[-1]))
        return (
            lambda x, y: suite.bnn(x, y, centred=True),
            lambda x, y: suite.bnn(x, y, centred=False),
            args,
            BNN_PRECISIONS,
            BNN_PRECISIONS,
        )
    if name.startswith("BNN diabetes"):
        # a data draw: 80% of the 442 rows, drawn with the draw's seed
        x, y = suite.diabetes()
        rows = np.sort(np.random.default_rng(int(name[-1])).permutation(len(y))[: len(y) * 4 // 5])
        return (
            lambda x, y: suite.bnn(x, y, hidden=16, centred=True),
            lambda x, y: suite.bnn(x, y, hidden=16, centred=False),
            (x[rows], y[rows]),
            BNN_PRECISIONS,
            BNN_PRECISIONS,
        )
    if name.startswith("funnel"):
        dim = int(name.split()[1][:-2])
        return (
            lambda: suite.funnel(dim, centred=True),
            lambda: suite.funnel(dim, centred=False),
            (),
            ("tau", "x"),
            ("tau",),
        )
    if name == "latent GP":
        from ungoverned import latent_gp

        gp = latent_gp(centred=True), latent_gp(centred=False)
        return *gp, (), ("length", "amp", "f"), ("length", "amp")
    model = hierarchical.eight_schools
    noncentred = numpyro.handlers.reparam(model, {"theta": LocScaleReparam(0)})
    return model, noncentred, (), ("mu", "tau", "theta"), ("tau",)


def kernel(sampler, centred, noncentred):
    from numpyro.infer import NUTS

    from numpyro_s3hmc import S3HMC

    if sampler == "S3HMC auto":  # the default
        return S3HMC(centred)
    if sampler.startswith("S3HMC"):
        return S3HMC(centred, trajectory=sampler.split()[1], coordinates="centred")
    return NUTS(centred if sampler == "NUTS centred" else noncentred)


def score(draws, scored, positive):
    """(the smallest bulk ESS over the ``scored`` sites' elements, the worst split R-hat),
    on the log of the ``positive`` sites; ``draws``: {site: (chains, draws, ...)}."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    ess, rhat = [], []
    for site in scored:
        v = np.asarray(draws[site], np.float64)
        v = np.log(v) if site in positive else v
        v = v.reshape(v.shape[0], v.shape[1], -1)
        ess.append(effective_sample_size(v).min())
        rhat.append(np.nanmax(split_gelman_rubin(v)))
    return float(min(ess)), float(max(rhat))


def run_sampler(sampler, k, args, seed, num_chains, num_warmup, num_samples, fields=()):
    """Warmup then sampling of kernel ``k`` (named ``sampler``), chains in sequence:
    (draws and extra fields by chain, the row's common scores). Gradients are counted
    in warmup and in sampling apart, the coordinates pilot's with warmup's."""
    from numpyro.infer import MCMC

    grad_field = "num_grad_evals" if sampler.startswith("S3HMC") else "num_steps"
    fields = (grad_field, "diverging", *fields)
    mcmc = MCMC(
        k,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.PRNGKey(seed), *args, collect_warmup=True, extra_fields=fields)
    warm = mcmc.get_extra_fields(group_by_chain=True)
    mcmc.run(mcmc.post_warmup_state.rng_key, *args, extra_fields=fields)
    seconds = time.perf_counter() - t0
    extra = mcmc.get_extra_fields(group_by_chain=True)
    grads = float(np.sum(extra[grad_field]))
    # coordinates="auto" runs a pilot before warmup: its gradients are warmup's
    warm_grads = float(np.sum(warm[grad_field])) + getattr(k, "pilot_grad_evals", 0)
    row = {
        "grads": grads,
        "divergences": int(np.sum(extra["diverging"])),
        "grads_per_draw": grads / (num_chains * num_samples),
        "warmup_grads_per_draw": warm_grads / (num_chains * num_warmup),
        "seconds": seconds,
    }
    return mcmc.get_samples(group_by_chain=True), extra, row


def run_cell(name, seed, num_chains, num_warmup, num_samples):
    """Every sampler on one model and MCMC seed: {sampler: scores}."""
    from numpyro.diagnostics import effective_sample_size

    centred, noncentred, args, scored, positive = problem(name)
    out = {}
    # --samplers (passed to this child process through the environment) runs a subset
    for sampler in hierarchical.chosen_samplers(SAMPLERS):
        k = kernel(sampler, centred, noncentred)
        # each chain's choice of scheme
        fields = ()
        if sampler == "S3HMC auto":
            fields = ("metric_state.use_tree", "metric_state.restarts")
        budget = (num_chains, num_warmup, num_samples)
        draws, extra, row = run_sampler(sampler, k, args, seed, *budget, fields)
        grads = row.pop("grads")
        min_ess, max_rhat = score(draws, scored, positive)
        # every element too (a BNN's weights), unscored: the table keeps the scored ones
        every = [
            effective_sample_size(np.asarray(v, np.float64).reshape(*v.shape[:2], -1)).min()
            for v in draws.values()
        ]
        out[sampler] = {
            "ess_per_1k": float(1000 * min_ess / grads),
            "rhat": max_rhat,
            **row,
            "every_element_ess_per_1k": float(1000 * min(every) / grads),
        }
        if "metric_state.use_tree" in extra:
            out[sampler]["chains_on_the_tree"] = int(np.sum(extra["metric_state.use_tree"][:, -1]))
        if "metric_state.restarts" in extra:  # warmup's restarts of trapped chains
            out[sampler]["restarts"] = int(np.sum(extra["metric_state.restarts"][:, -1]))
    return out


def _median(cells, name, sampler, key="ess_per_1k"):
    """The median over seeds, or None where the (model, sampler) pair was not run."""
    rows = cells.get((name, sampler))
    return None if not rows else statistics.median(r[key] for r in rows)


def funnel_slope(cells, sampler):
    """(slope of log(gradients per effective sample) against log D, {D: gradients per
    effective sample}) over the funnels of ``FUNNEL_DIMS`` run for ``sampler``."""
    cost = {}
    for d in FUNNEL_DIMS:
        ess = _median(cells, f"funnel {d}-D", sampler)
        if ess:
            cost[d] = 1000 / ess
    if len(cost) < 2:
        return None, cost
    return float(np.polyfit(np.log(list(cost)), np.log(list(cost.values())), 1)[0]), cost


def markdown(cells, models, seeds, command) -> str:
    lines = [
        f"Median over MCMC seeds {', '.join(map(str, seeds))} of the smallest bulk ESS per"
        " 1,000 sampling-phase gradients (BNNs: over the five log precisions; otherwise over"
        " every latent element); the worst split R-hat and the total divergences over the"
        " seeds; median gradients per draw in warmup / in sampling; – where not run.",
        "",
        "| model | "
        + " | ".join(SAMPLERS)
        + " | static / better NUTS | nuts / better NUTS | auto / better NUTS |",
        "|---|" + "---|" * (len(SAMPLERS) + 3),
    ]
    for name in models:
        cols = []
        for sampler in SAMPLERS:
            rows = cells.get((name, sampler))
            if not rows:
                cols.append("–")
                continue
            rhat = max(r["rhat"] for r in rows)
            div = sum(r["divergences"] for r in rows)
            warm = statistics.median(r["warmup_grads_per_draw"] for r in rows)
            samp = statistics.median(r["grads_per_draw"] for r in rows)
            cols.append(
                f"{_median(cells, name, sampler):.3g}; R-hat {rhat:.3f}, {div} div;"
                f" {warm:.0f} / {samp:.0f} grads"
            )
        best = max(_median(cells, name, f"NUTS {p}") or 0 for p in ("centred", "non-centred"))
        for s in ("static", "nuts", "auto"):
            own = _median(cells, name, f"S3HMC {s}")
            cols.append("–" if own is None or not best else f"{own / best:.2f}×")
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    slopes = []
    for sampler in SAMPLERS:
        slope, cost = funnel_slope(cells, sampler)
        if slope is not None:
            pts = ", ".join(f"{c:.3g} at {d}" for d, c in cost.items())
            slopes.append(f"- {sampler}: {pts}; slope {slope:.2f}")
    if slopes:
        lines += [
            "",
            "Funnel: median gradients per effective sample against D, and the slope of its"
            " log against log D:",
            "",
            *slopes,
        ]
    chosen = []
    for name in models:
        rows = cells.get((name, "S3HMC auto")) or []
        if rows and all("chains_on_the_tree" in r for r in rows):
            trees = "/".join(str(r["chains_on_the_tree"]) for r in rows)
            every = _median(cells, name, "S3HMC auto", "every_element_ess_per_1k")
            nuts = [
                f"{s} {_median(cells, name, s, 'every_element_ess_per_1k'):.3g}"
                for s in ("NUTS centred", "NUTS non-centred")
                if all("every_element_ess_per_1k" in r for r in cells.get((name, s)) or [{}])
            ]
            beside = f" ({', '.join(nuts)})" if nuts else ""
            chosen.append(f"- {name}: {trees} of 4 chains; every element {every:.3g}{beside}")
    if chosen:
        lines += [
            "",
            'S3HMC auto (`trajectory="auto"`): the chains that chose the no-U-turn tree,'
            " per seed, and the median smallest bulk ESS over every latent element per 1,000"
            " gradients (where recorded; NumPyro's NUTS beside it, on the same draws as its"
            " table cells):",
            "",
            *chosen,
        ]
    lines += ["", "Command:", "", f"    {command}"]
    return "\n".join(lines)


def figure(cells, models, path):
    """Median min ESS per 1,000 gradients, one group of bars per model (log scale), and
    the funnel's gradients per effective sample against D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(SAMPLERS)
    for j, sampler in enumerate(SAMPLERS):
        med = [_median(cells, m, sampler) or 0 for m in models]
        offset = (j - (len(SAMPLERS) - 1) / 2) * width
        ax.bar(np.arange(len(models)) + offset, med, width, label=sampler, color=f"C{j}")
        slope, cost = funnel_slope(cells, sampler)
        if slope is not None:
            bx.loglog(
                list(cost),
                list(cost.values()),
                "o-",
                color=f"C{j}",
                label=f"{sampler} ({slope:.2f})",
            )
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)), models, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("min ESS per 1,000 gradients")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Median over 3 MCMC seeds, 4 chains × 1000 + 1000", fontsize=9)
    bx.set_xticks(FUNNEL_DIMS, [str(d) for d in FUNNEL_DIMS])
    bx.minorticks_off()
    bx.set_xlabel("funnel dimension D")
    bx.set_ylabel("gradients per effective sample")
    bx.set_title("Funnel (slope)", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(cells, seeds, command, write):
    """Print the table of every model in ``cells``; with ``write``, into results.md and
    the figure into docs/."""
    models = [m for m in MODELS if any((m, s) in cells for s in SAMPLERS)]
    text = markdown(cells, models, seeds, command)
    print(text)
    if write:
        from families import write_results

        write_results(text, start=START, end=END, title="Trajectories: static length or tree")
        figure(cells, models, HERE.parent / "docs" / "trajectories.png")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = HERE / "trajectories.json"
    if argv[:1] == ["--cell"]:  # one (model, seed), in a child process
        name, seed, chains, warmup, samples = argv[1:]
        print(json.dumps(run_cell(name, int(seed), int(chains), int(warmup), int(samples))))
        return 0
    if argv[:1] == ["--report"]:  # the table and figure of the runs saved so far
        saved = json.loads(path.read_text())
        cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
        seeds = range(len(next(iter(cells.values()))))
        report(cells, seeds, "python benchmarks/trajectories.py --write", write=True)
        return 0
    args = hierarchical.parse_suite_args(
        argv, __doc__, MODELS, "update benchmarks/results.md", SAMPLERS
    )
    cells = hierarchical.run(
        args.models, args.seeds, args.num_chains, args.num_warmup, args.num_samples, __file__
    )
    command = shlex.join(["python", "benchmarks/trajectories.py", *argv])
    # merged with earlier runs of other models, so the suite can run in parts
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved.update({f"{m} | {s}": rows for (m, s), rows in cells.items()})
    if not args.quick:  # a quick run is a smoke test, not a measurement
        path.write_text(json.dumps(saved, indent=1))
    cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
    report(cells, args.seeds, command, write=args.write and not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
