"""Mixing at scale: BNN classifiers on the digits, S3HMC beside NUTS, per gradient.

The networks of ``bnn_scale.py``'s ``SIZES`` that take the 8×8 digits as they are
(``mlp-1k``: [64, 16, 10], 1,210 parameters; ``mlp-10k``: [64, 128, 10], 9,610), built
with :func:`numpyro_s3hmc.bnn.hierarchical_bnn` (a Gamma(1, 1) precision per layer's
kernel and bias, a categorical likelihood) on a 70% training split of scikit-learn's
digits (1,258 images), written centred as a user writes them. The larger sizes of
``bnn_scale.py`` are out of reach of 2 CPU cores here (the 8×8 CNN's gradient costs
206 ms there; 1,000 draws of a few hundred gradients would take days).

Samplers, same key and budget: S3HMC's defaults (the coordinates pilot's gradients are
counted in warmup's), NumPyro NUTS on the model as written, and NUTS after
``LocScaleReparam(0)`` on every layer's kernel and bias. Scores, per 1,000
sampling-phase gradients: the smallest bulk ESS over the log precisions, and over the
posterior predictive class probabilities of 50 held-out images (function space: 500
quantities, which the weights' sign and permutation symmetries leave unchanged) the
smallest and the median bulk ESS; the worst split R-hat of each; divergences and
gradients per draw in warmup and in sampling. Medians over the MCMC seeds.

    python benchmarks/bnn_mixing.py [--quick] [--seeds 0 1 2] [--models mlp-1k ...] [--write]
    python benchmarks/bnn_mixing.py --report   # the table from bnn_mixing.json

``--write`` puts the table in ``benchmarks/results.md`` and merges the runs into
``benchmarks/bnn_mixing.json``. Each (network, seed) runs in its own process.
"""

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bnn_scale  # noqa: E402
import hierarchical  # noqa: E402
import trajectories  # noqa: E402

START, END = "<!-- bnn-mixing:start -->", "<!-- bnn-mixing:end -->"
MODELS = ("mlp-1k", "mlp-10k")
SAMPLERS = ("S3HMC auto", "NUTS centred", "NUTS non-centred")
NUM_TEST = 50  # held-out images whose predictive class probabilities are scored


def problem(name):
    """(centred model, non-centred model, (x, y), x_test)."""
    from numpyro.handlers import reparam
    from numpyro.infer.reparam import LocScaleReparam

    from numpyro_s3hmc.bnn import hierarchical_bnn

    arch, hidden, image = bnn_scale.SIZES[name]
    x, y, x_test, _ = bnn_scale.digits_for(image)
    module = bnn_scale.build_module(arch, hidden)
    model = hierarchical_bnn(module, (1, *image), likelihood="classification")
    noncentred = reparam(model, {site: LocScaleReparam(0) for site in model.param_sites})
    return model, noncentred, (x, y), x_test[:NUM_TEST]


def function_space(model, draws, x_test):
    """{chains, draws, image × class} predictive class probabilities."""
    from numpyro_s3hmc.bnn import predict

    chains, n = next(iter(draws.values())).shape[:2]
    flat = {k: np.reshape(v, (chains * n, *np.shape(v)[2:])) for k, v in draws.items()}
    probs = np.asarray(predict(model, flat, x_test)["probs"], np.float64)
    return probs.reshape(chains, n, -1)


def run_cell(name, seed, num_chains, num_warmup, num_samples):
    """Every sampler on one network and MCMC seed: {sampler: scores}."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    centred, noncentred, args, x_test = problem(name)
    precisions = centred.precision_sites
    out = {}
    for sampler in hierarchical.chosen_samplers(SAMPLERS):
        k = trajectories.kernel(sampler, centred, noncentred)
        budget = (num_chains, num_warmup, num_samples)
        draws, _, row = trajectories.run_sampler(sampler, k, args, seed, *budget)
        grads = row.pop("grads")
        min_ess, max_rhat = trajectories.score(draws, precisions, precisions)
        probs = function_space(centred, draws, x_test)
        # a probability that float32 saturates (exactly 0 or 1 in every draw) has no ESS
        ess = effective_sample_size(probs)
        ess = ess[np.isfinite(ess)]
        out[sampler] = {
            "ess_per_1k": float(1000 * min_ess / grads),
            "rhat": max_rhat,
            "probs_scored": int(ess.size),
            "probs_min_ess_per_1k": float(1000 * np.min(ess) / grads),
            "probs_median_ess_per_1k": float(1000 * np.median(ess) / grads),
            "probs_rhat": float(np.nanmax(split_gelman_rubin(probs))),
            **row,
            "coordinates": getattr(k, "coordinates", None),
        }
    return out


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def markdown(saved) -> str:
    """The table of every saved (network, sampler): ``{"network | sampler": {"rows",
    "seeds", "settings", "command", "measured"}}``."""
    lines = [
        "Median over the MCMC seeds of: the smallest bulk ESS over the log precisions per"
        " 1,000 sampling-phase gradients; over the predictive class probabilities of"
        f" {NUM_TEST} held-out images (those that float32 does not saturate), the smallest"
        " and the median bulk ESS per 1,000 gradients; the worst split R-hat of each over"
        " the seeds; total divergences; median gradients per draw in warmup / in sampling."
        " Per seed in brackets.",
        "",
        "| network | θ | sampler | chains × warmup + draws, seeds | precisions | R-hat"
        " | probabilities: min | median | R-hat | divergences | grads / draw |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells = {tuple(k.split(" | ")): v for k, v in saved.items()}
    commands = {}
    for name in MODELS:
        for sampler in SAMPLERS:
            cell = cells.get((name, sampler))
            if not cell:
                continue
            rows = cell["rows"]
            for c in cell["command"].split("; "):
                commands.setdefault(f"{c} ({cell['measured']})", None)
            per_seed = "/".join(f"{r['ess_per_1k']:.3g}" for r in rows)
            probs_seed = "/".join(f"{r['probs_min_ess_per_1k']:.3g}" for r in rows)
            lines.append(
                f"| {name} | {rows[0]['theta']:,} | {sampler}"
                f" | {cell['settings']}, {','.join(map(str, cell['seeds']))}"
                f" | {_median(rows, 'ess_per_1k'):.3g} ({per_seed})"
                f" | {max(r['rhat'] for r in rows):.3f}"
                f" | {_median(rows, 'probs_min_ess_per_1k'):.3g} ({probs_seed})"
                f" | {_median(rows, 'probs_median_ess_per_1k'):.3g}"
                f" | {max(r['probs_rhat'] for r in rows):.3f}"
                f" | {sum(r['divergences'] for r in rows)}"
                f" | {_median(rows, 'warmup_grads_per_draw'):.0f} /"
                f" {_median(rows, 'grads_per_draw'):.0f} |"
            )
        ratio = {}
        for key in ("ess_per_1k", "probs_min_ess_per_1k", "probs_median_ess_per_1k"):
            nuts = [
                _median(cells[(name, s)]["rows"], key) for s in SAMPLERS[1:] if (name, s) in cells
            ]
            if nuts and (name, SAMPLERS[0]) in cells:
                ratio[key] = _median(cells[(name, SAMPLERS[0])]["rows"], key) / max(nuts)
        if ratio:
            lines.append(
                f"| {name} | | S3HMC / better NUTS | | {ratio['ess_per_1k']:.2f}× | |"
                f" {ratio['probs_min_ess_per_1k']:.2f}× | {ratio['probs_median_ess_per_1k']:.2f}×"
                " | | | |"
            )
    lines += ["", "Commands:", "", *(f"    {c}" for c in commands)]
    return "\n".join(lines)


def merge(saved, cells, seeds, settings, command):
    """Put a run's ``cells`` ({(network, sampler): [row per seed]}) into ``saved``: a
    run of other seeds with the same settings adds to the saved seeds, else replaces."""
    for (name, sampler), rows in cells.items():
        for seed, r in zip(seeds, rows):
            r["theta"], r["seed"] = bnn_scale_theta(name), seed
        old = saved.get(f"{name} | {sampler}")
        kept = {}
        if old and old["settings"] == settings:
            kept = dict(zip(old["seeds"], old["rows"]))
        kept.update(zip(seeds, rows))
        commands = old["command"].split("; ") if kept.keys() - set(seeds) else []
        saved[f"{name} | {sampler}"] = {
            "rows": [kept[s] for s in sorted(kept)],
            "seeds": sorted(kept),
            "settings": settings,
            "command": "; ".join(dict.fromkeys([*commands, command])),
            "measured": time.strftime("%Y-%m-%d"),
        }
    return saved


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = HERE / "bnn_mixing.json"
    if argv[:1] == ["--cell"]:  # one (network, seed), in a child process
        name, seed, chains, warmup, samples = argv[1:]
        out = run_cell(name, int(seed), int(chains), int(warmup), int(samples))
        print(json.dumps(out))
        return 0
    if argv[:1] == ["--report"]:
        print(markdown(json.loads(path.read_text())))
        return 0
    args = hierarchical.parse_suite_args(
        argv, __doc__, MODELS, "update benchmarks/results.md", SAMPLERS
    )
    cells = hierarchical.run(
        args.models, args.seeds, args.num_chains, args.num_warmup, args.num_samples, __file__
    )
    saved = json.loads(path.read_text()) if args.write and path.exists() else {}
    settings = f"{args.num_chains} × {args.num_warmup} + {args.num_samples}"
    command = shlex.join(["python", "benchmarks/bnn_mixing.py", *argv])
    merge(saved, cells, args.seeds, settings, command)
    text = markdown(saved)
    print(text)
    if args.write and not args.quick:
        path.write_text(json.dumps(saved, indent=1))
        from families import write_results

        write_results(text, start=START, end=END, title="BNN mixing at scale: the digits")
    return 0


def bnn_scale_theta(name) -> int:
    """The network's number of parameters."""
    from numpyro_s3hmc.bnn import param_names

    arch, hidden, image = bnn_scale.SIZES[name]
    shapes = param_names(bnn_scale.build_module(arch, hidden), (1, *image))
    return int(sum(np.prod(s) for s in shapes.values()))


if __name__ == "__main__":
    sys.exit(main())
