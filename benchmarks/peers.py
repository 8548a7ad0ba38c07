"""BlackJAX peers: NUTS with nutpie's low-rank metric and MAMS, beside S3HMC and NUTS.

The peers a user could reach for instead of S3HMC, each on the centred model as written
and on the non-centred one, on the models of one of two suites (``--suite``):

- ``hierarchical`` (the default): ``hierarchical.py``'s eight schools, data-
  informativeness sweep and group regression; non-centred is ``LocScaleReparam(0)``;
  scored as there, by ArviZ's bulk ESS of the latent sites' values;
- ``trajectories``: ``trajectories.py``'s models (the funnels, BNNs, eight schools,
  latent GP) with its non-centred forms and its scores (NumPyro's ESS, on the log of
  the positive sites; a BNN's five log precisions).

The peers:

- **BlackJAX NUTS, low-rank**: ``blackjax.nuts`` tuned by
  ``blackjax.window_adaptation_low_rank`` (Stan's window schedule with the
  Fisher-divergence low-rank metric of nutpie), target acceptance 0.8, max tree
  depth 10; one gradient per leapfrog step;
- **BlackJAX MAMS**: ``blackjax.adjusted_mclmc_dynamic`` (the Metropolis-adjusted
  microcanonical sampler with a random trajectory length) tuned by
  ``blackjax.adjusted_mclmc_find_L_and_step_size`` (target acceptance 0.9, diagonal
  preconditioning, its default tuning fractions of the sampling run's length);
  the isokinetic McLachlan integrator, two gradients per step.

Both run on NumPyro's potential (``initialize_model``: the same unconstrained space
and initial points as NumPyro's NUTS), 4 vmapped chains, each with its own warmup.
The score is the smallest bulk ESS over the scored quantities per 1,000
sampling-phase gradients, median over seeds; warmup gradients are counted apart.
S3HMC (its defaults) and NumPyro's NUTS come from the suite's own JSON (same seeds,
chains, draws and scores), so the suite need not run twice.

BlackJAX is a benchmark extra, not a dependency: ``pip install -e ".[peers]"``.

    python benchmarks/peers.py [--suite trajectories] [--quick] [--seeds 0 1 2]
        [--models ...] [--samplers ...] [--write]   # runs are merged into the saved ones
    python benchmarks/peers.py [--suite trajectories] --report   # the table, saved runs

``--write`` puts the table in ``benchmarks/results.md``.
"""

import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import hierarchical
import numpy as np
import trajectories

HERE = Path(__file__).resolve().parent
PEERS = ("BlackJAX NUTS low-rank", "BlackJAX MAMS")
PARAMETERISATIONS = ("centred", "non-centred")
SAMPLERS = tuple(f"{p} {q}" for p in PEERS for q in PARAMETERISATIONS)
# suite: (its models, its saved runs, S3HMC's row there, NumPyro's two NUTS rows, title)
SUITES = {
    "hierarchical": (
        hierarchical.MODELS,
        "hierarchical.json",
        "S3HMC",
        ("NUTS centred", "NUTS + LocScaleReparam(0)"),
        "BlackJAX peers on the hierarchical suite",
    ),
    "trajectories": (
        trajectories.MODELS,
        "trajectories.json",
        "S3HMC auto",
        ("NUTS centred", "NUTS non-centred"),
        "BlackJAX peers on the trajectory suite",
    ),
}
MAMS_GRADS_PER_STEP = 2  # isokinetic McLachlan: two force evaluations per step (FSAL)


def _nuts(logdensity, position, key, num_warmup, num_samples):
    """One chain: (draws, sampling gradients, warmup gradients, divergences)."""
    import blackjax
    import jax

    warm_key, run_key = jax.random.split(key)
    warmup = blackjax.window_adaptation_low_rank(blackjax.nuts, logdensity)
    (state, params), info = warmup.run(warm_key, position, num_steps=num_warmup)
    step = blackjax.nuts(logdensity, **params).step

    def one(state, k):
        state, info = step(k, state)
        return state, (state.position, info.num_integration_steps, info.is_divergent)

    _, (draws, steps, divergent) = jax.lax.scan(one, state, jax.random.split(run_key, num_samples))
    return draws, steps.sum(), info.info.num_integration_steps.sum(), divergent.sum()


def _mams(logdensity, position, key, num_warmup, num_samples):
    """One chain of MAMS, as BlackJAX's documentation runs it; ``num_warmup`` is not
    used: its tuner runs fractions of the sampling run's length (counted apart)."""
    import blackjax
    import jax
    from blackjax.mcmc import adjusted_mclmc_dynamic as mams

    init_key, tune_key, run_key = jax.random.split(key, 3)
    kernel = mams.build_kernel(
        integration_steps_fn=mams.make_random_trajectory_length_fn(True),
        integrator=blackjax.mcmc.integrators.isokinetic_mclachlan,
    )
    state = mams.init(position, logdensity, random_generator_arg=init_key)
    state, params, tuning_steps = blackjax.adjusted_mclmc_find_L_and_step_size(
        mclmc_kernel=kernel,
        logdensity_fn=logdensity,
        num_steps=num_samples,
        state=state,
        rng_key=tune_key,
        target=0.9,
        diagonal_preconditioning=True,
    )

    def one(state, k):
        state, info = kernel(
            rng_key=k,
            state=state,
            logdensity_fn=logdensity,
            step_size=params.step_size,
            inverse_mass_matrix=params.inverse_mass_matrix,
            integration_steps_params=(params.L / params.step_size,),
        )
        return state, (state.position, info.num_integration_steps, info.is_divergent)

    _, (draws, steps, divergent) = jax.lax.scan(one, state, jax.random.split(run_key, num_samples))
    return (
        draws,
        MAMS_GRADS_PER_STEP * steps.sum(),
        MAMS_GRADS_PER_STEP * tuning_steps,
        divergent.sum(),
    )


def run_peer(model, args, sampler, seed, num_chains, num_warmup, num_samples, sites):
    """One peer on ``model(*args)``: the constrained draws of ``sites`` and the counts."""
    import jax
    from jax.flatten_util import ravel_pytree

    from numpyro.infer.util import initialize_model

    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains + 1)
    # NumPyro's initialisation (uniform in (-2, 2) on the unconstrained space), batched
    # over the chains' keys
    info, potential, postprocess, _ = initialize_model(keys[:num_chains], model, model_args=args)
    _, unravel = ravel_pytree(jax.tree.map(lambda v: v[0], info.z))
    positions = jax.vmap(lambda z: ravel_pytree(z)[0])(info.z)

    def logdensity(x):
        return -potential(unravel(x))

    chain = _nuts if sampler.startswith("BlackJAX NUTS") else _mams
    run = jax.jit(
        jax.vmap(lambda x, k: chain(logdensity, x, k, num_warmup, num_samples)),
    )
    draws, grads, warm_grads, divergent = run(positions, jax.random.split(keys[-1], num_chains))
    constrained = jax.vmap(jax.vmap(lambda x: postprocess(unravel(x))))(draws)
    return (
        {s: np.asarray(constrained[s]) for s in sites},
        float(grads.sum()),
        float(warm_grads.sum()),
        int(divergent.sum()),
    )


def problem(suite, name):
    """(centred model, non-centred model, model args, scored sites, positive sites);
    for the hierarchical suite, positive is None: scored as that suite scores."""
    if suite == "trajectories":
        return trajectories.problem(name)
    import numpyro
    from numpyro.infer.reparam import LocScaleReparam

    from numpyro_s3hmc.compare import _model_sites

    model = hierarchical.model_of(name)
    noncentred = numpyro.handlers.reparam(model, {"theta": LocScaleReparam(0)})
    return model, noncentred, (), _model_sites(model, (), {}), None


def run_cell(name, seed, num_chains, num_warmup, num_samples, suite="hierarchical"):
    """Every peer on one model and seed: {sampler: scores}, as the suite's run_cell."""
    from numpyro_s3hmc._arviz import arviz

    centred, noncentred, args, scored, positive = problem(suite, name)
    out = {}
    for sampler in hierarchical.chosen_samplers(list(SAMPLERS)):
        model = centred if sampler.endswith(" centred") else noncentred  # or " non-centred"
        draws, grads, warm_grads, divergences = run_peer(
            model, args, sampler, seed, num_chains, num_warmup, num_samples, scored
        )
        if positive is None:  # hierarchical.py's scores (compare_samplers'): ArviZ's
            az = arviz()
            posterior = az.convert_to_dataset(draws)
            with np.errstate(divide="ignore", invalid="ignore"):
                ess = az.ess(posterior, method="bulk")
                rhat = az.rhat(posterior)
            min_ess = min(float(np.min(ess[s].values)) for s in scored)
            max_rhat = max(float(np.max(rhat[s].values)) for s in scored)
            tau = 1000 * float(ess["tau"].values) / grads
        else:
            min_ess, max_rhat = trajectories.score(draws, scored, positive)
            tau = float("nan")
        out[sampler] = {
            "ess_per_1k": 1000 * min_ess / grads,
            "tau_per_1k": tau,
            "rhat": max_rhat,
            "divergences": divergences,
            "grads_per_draw": grads / (num_chains * num_samples),
            "warmup_grads_per_chain": warm_grads / num_chains,
        }
    return out


def markdown(cells, models, seeds, command, suite="hierarchical", ours=None) -> str:
    """The table; ``ours``: the suite's own runs (default: read from its JSON)."""
    _, saved_runs, s3hmc, nuts, _ = SUITES[suite]
    if ours is None:
        saved = json.loads((HERE / saved_runs).read_text())
        ours = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
    scored = (
        "every latent element (in brackets: τ's own)"
        if suite == "hierarchical"
        else "the scored quantities (a BNN's five log precisions; every latent elsewhere)"
    )
    lines = [
        f"Median over seeds {', '.join(map(str, seeds))} of the smallest bulk ESS over {scored}"
        " per 1,000 sampling-phase gradients; worst R-hat and total sampling-phase"
        " divergences over the seeds; warmup gradients per chain. S3HMC (its defaults) and"
        f" the better of NumPyro's {' and '.join(nuts)} are from `{saved_runs}` (same seeds,"
        " chains, draws and scores). The last column is S3HMC against the best sampler"
        " whose R-hat is at most 1.01.",
        "",
        "| model | S3HMC | better NumPyro NUTS | " + " | ".join(SAMPLERS) + " | S3HMC / best |",
        "|---|---|---|" + "---|" * (len(SAMPLERS) + 1),
    ]
    for name in models:
        if not all((name, s) in ours for s in (s3hmc, *nuts)):
            continue  # the suite did not run this model with every sampler
        s3 = statistics.median(r["ess_per_1k"] for r in ours[(name, s3hmc)])
        numpyro_best = max(
            statistics.median(r["ess_per_1k"] for r in ours[(name, s)]) for s in nuts
        )
        cols, best = [], numpyro_best
        for sampler in SAMPLERS:
            rows = cells.get((name, sampler))
            if not rows:  # not run (--samplers)
                cols.append("–")
                continue
            med = statistics.median(r["ess_per_1k"] for r in rows)
            tau = statistics.median(r["tau_per_1k"] for r in rows)
            warm = statistics.median(r["warmup_grads_per_chain"] for r in rows)
            rhat = max(r["rhat"] for r in rows)
            div = sum(r["divergences"] for r in rows)
            if rhat <= 1.01:  # a peer that did not converge is not the bar to beat
                best = max(best, med)
            tau = "" if np.isnan(tau) else f" ({tau:.3g})"
            cols.append(f"{med:.3g}{tau}; R-hat {rhat:.3f}, {div} div, {warm:,.0f} warmup grads")
        lines.append(
            f"| {name} | {s3:.3g} | {numpyro_best:.3g} | "
            + " | ".join(cols)
            + f" | {s3 / best:.2f}× |"
        )
    lines += ["", "Command:", "", f"    {command}"]
    return "\n".join(lines)


def figure(path, suites=("hierarchical", "trajectories")):
    """Every model of the saved peer runs, one panel a suite: the median ESS per 1,000
    sampling gradients of S3HMC, the better of NumPyro's two NUTS runs and each peer,
    hollow where its R-hat exceeds 1.01 (the table's numbers, ``markdown``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for suite in suites:
        models, saved_runs, s3hmc, nuts, title = SUITES[suite]
        runs = HERE / ("peers.json" if suite == "hierarchical" else f"peers_{suite}.json")
        if not runs.exists():
            continue
        cells = {tuple(k.split(" | ")): v for k, v in json.loads(runs.read_text()).items()}
        saved = json.loads((HERE / saved_runs).read_text())
        ours = {tuple(k.split(" | ")): v for k, v in saved.items()}
        rows = []
        for name in models:
            if not all((name, s) in ours for s in (s3hmc, *nuts)):
                continue
            if not any((name, s) in cells for s in SAMPLERS):
                continue
            better = max(
                nuts, key=lambda s: statistics.median(r["ess_per_1k"] for r in ours[(name, s)])
            )
            points = {"S3HMC": ours[(name, s3hmc)]}
            points["NumPyro NUTS (better of its two)"] = ours[(name, better)]
            points.update({s: cells[(name, s)] for s in SAMPLERS if (name, s) in cells})
            rows.append((name, points))
        panels.append((title, rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.4), squeeze=False)
    styles = dict(zip(("S3HMC", "NumPyro NUTS (better of its two)", *SAMPLERS), "o^sDvP"))
    colours = dict(zip(styles, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        for i, (_, points) in enumerate(rows):
            for label, runs in points.items():
                ess = statistics.median(r["ess_per_1k"] for r in runs)
                converged = max(r["rhat"] for r in runs) <= 1.01
                ax.plot(
                    max(ess, 1e-2),
                    i,
                    styles[label],
                    color=colours[label],
                    markerfacecolor=colours[label] if converged else "none",
                )
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("min bulk ESS per 1,000 sampling gradients (median of 3 seeds)")
        ax.set_title(title + " (hollow: R-hat > 1.01)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    handles = [
        plt.Line2D([], [], linestyle="", marker=styles[k], color=colours[k], label=k)
        for k in styles
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--cell"]:  # one (model, seed), in a child process
        name, seed, chains, warmup, samples = argv[1:]
        suite = os.environ.get("PEERS_SUITE", "hierarchical")
        out = run_cell(name, int(seed), int(chains), int(warmup), int(samples), suite)
        print(json.dumps(out))
        return 0
    suite = "hierarchical"
    if "--suite" in argv:  # the child processes read it from PEERS_SUITE
        i = argv.index("--suite")
        suite = argv[i + 1]
        if suite not in SUITES:
            sys.exit(f"--suite takes one of {sorted(SUITES)}")
        del argv[i : i + 2]
        os.environ["PEERS_SUITE"] = suite
    models, _, _, _, title = SUITES[suite]
    path = HERE / ("peers.json" if suite == "hierarchical" else f"peers_{suite}.json")
    flag = [] if suite == "hierarchical" else ["--suite", suite]
    if argv[:1] == ["--report"]:
        saved = json.loads(path.read_text())
        cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
        seeds = list(range(len(next(iter(cells.values())))))
        ran = [m for m in models if any((m, s) in cells for s in SAMPLERS)]
        args = hierarchical.parse_suite_args(
            ["--seeds", *map(str, seeds), "--write", "--models", *ran], __doc__, models, ""
        )
        command = shlex.join(["python", "benchmarks/peers.py", *flag, "--write"])
    else:
        args = hierarchical.parse_suite_args(argv, __doc__, models, "update results.md", SAMPLERS)
        cells = hierarchical.run(
            args.models,
            args.seeds,
            args.num_chains,
            args.num_warmup,
            args.num_samples,
            script=__file__,
        )
        command = shlex.join(["python", "benchmarks/peers.py", *flag, *argv])
        saved = json.loads(path.read_text()) if path.exists() else {}
        saved.update({f"{m} | {s}": rows for (m, s), rows in cells.items()})
        if not args.quick:  # a quick run is a smoke test, not a measurement
            path.write_text(json.dumps(saved, indent=1))
        cells = {tuple(k.split(" | ")): rows for k, rows in saved.items()}
    text = markdown(cells, args.models, args.seeds, command, suite)
    print(text)
    if args.write and not args.quick:
        from families import write_results

        tag = "peers" if suite == "hierarchical" else f"peers-{suite}"
        write_results(text, start=f"<!-- {tag}:start -->", end=f"<!-- {tag}:end -->", title=title)
        figure(HERE.parent / "docs" / "peers.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
