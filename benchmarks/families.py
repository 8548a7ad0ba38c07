"""Every hyperprior family's prior-only funnel: S3HMC against NUTS, centred and not.

For each family (HalfNormal, HalfCauchy, Exponential, LogNormal as a scale,
InverseGamma as a variance, Gamma as a scale, Gamma as a precision) the model is

    h ~ prior,   theta_i | h ~ Normal(0, s(h)),   i = 1..D (default 50),

with s(h) = h, √h or 1/√h, and no data: the posterior is the prior. Three samplers
run on it with the same key and budget: S3HMC with its defaults, NumPyro NUTS on the
centred model, and NUTS with ``LocScaleReparam(0)`` on ``theta`` (the one line a
NumPyro user adds). The score is the bulk ESS of log h (rank-based, so the same as
that of h) per 1,000 sampling-phase gradients, counted by
:func:`numpyro_s3hmc.compare_samplers` (S3HMC's ``num_grad_evals``, NUTS's
``num_steps``), and the median over seeds is reported.

    python benchmarks/families.py [--quick] [--seeds 0 1 2] [--families halfcauchy ...]

``--quick`` runs 2 chains × 300 + 300 on one seed and prints the table only;
otherwise 4 chains × 1000 + 1000 (``--num-warmup``, ``--num-samples``,
``--num-chains``) and ``--write`` puts the table in ``benchmarks/results.md``.
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpyro
import numpyro.distributions as dist

HERE = Path(__file__).resolve().parent
START, END = "<!-- families:start -->", "<!-- families:end -->"

# name: (prior, how h enters the child)
FAMILIES = {
    "HalfNormal": (lambda: dist.HalfNormal(1.0), "scale"),
    "HalfCauchy": (lambda: dist.HalfCauchy(1.0), "scale"),
    "Exponential": (lambda: dist.Exponential(1.0), "scale"),
    "LogNormal": (lambda: dist.LogNormal(0.0, 1.0), "scale"),
    "InverseGamma": (lambda: dist.InverseGamma(3.0, 2.0), "variance"),
    "Gamma scale": (lambda: dist.Gamma(2.0, 2.0), "scale"),
    "Gamma precision": (lambda: dist.Gamma(2.0, 1.0), "precision"),
}
POWER = {"scale": 1.0, "variance": 0.5, "precision": -0.5}  # s(h) = h ** POWER
SAMPLERS = ("S3HMC", "NUTS centred", "NUTS + LocScaleReparam(0)")


def funnel(family, dim):
    prior, role = FAMILIES[family]

    def model():
        h = numpyro.sample("h", prior())
        numpyro.sample("theta", dist.Normal(0.0, h ** POWER[role]).expand([dim]).to_event(1))

    return model


def kernels(family, dim):
    from numpyro.infer import NUTS
    from numpyro.infer.reparam import LocScaleReparam

    from numpyro_s3hmc import S3HMC

    model = funnel(family, dim)
    return {
        "S3HMC": S3HMC(model),
        "NUTS centred": NUTS(model),
        "NUTS + LocScaleReparam(0)": NUTS(
            numpyro.handlers.reparam(model, {"theta": LocScaleReparam(0)})
        ),
    }


def run_cell(family, seed, dim, num_chains, num_warmup, num_samples) -> dict:
    """One family and seed, every sampler: {sampler: {ess_per_1k, rhat, divergences}}."""
    import jax

    from numpyro_s3hmc import compare_samplers

    table, _ = compare_samplers(
        kernels(family, dim),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        rng_key=jax.random.PRNGKey(seed),
        chain_method="sequential",
        progress_bar=False,
        var_names=["h"],
    )
    return {
        sampler: {
            "ess_per_1k": float(table.loc[sampler, "ESS/1k grads"]),
            "rhat": float(table.loc[sampler, "max R-hat"]),
            "divergences": int(table.loc[sampler, "divergences"]),
            "chains_on_the_tree": table.attrs["tree"].get(sampler),
        }
        for sampler in SAMPLERS
    }


def run(families, seeds, dim, num_chains, num_warmup, num_samples):
    """{(family, sampler): [row per seed]}. Each (family, seed) runs in its own Python
    process: XLA's CPU backend runs out of code memory after a few dozen compilations
    in one process."""
    cells = {}
    for family in families:
        for seed in seeds:
            t0 = time.time()
            cell = [family, str(seed), str(dim), str(num_chains), str(num_warmup)]
            out = subprocess.run(
                [sys.executable, __file__, "--cell", *cell, str(num_samples)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            for sampler in SAMPLERS:
                cells.setdefault((family, sampler), []).append(result[sampler])
            summary = ", ".join(f"{s} {result[s]['ess_per_1k']:.3g}" for s in SAMPLERS)
            print(f"{family}, seed {seed} ({time.time() - t0:.0f} s): {summary}", flush=True)
    return cells


def markdown(cells, families, seeds, command) -> str:
    lines = [
        f"Median over seeds {', '.join(map(str, seeds))} of the bulk ESS of log h per 1,000"
        " sampling-phase gradients (range in brackets); worst R-hat of h and total"
        " sampling-phase divergences over the seeds; how many of S3HMC's chains chose the"
        ' no-U-turn tree in warmup (trajectory="auto").',
        "",
        "| family (h's role) | " + " | ".join(SAMPLERS) + " | S3HMC / NUTS centred |"
        " S3HMC / NUTS + reparam |",
        "|---|" + "---|" * (len(SAMPLERS) + 2),
    ]
    for family in families:
        cols, med = [], {}
        for sampler in SAMPLERS:
            rows = cells[(family, sampler)]
            values = [r["ess_per_1k"] for r in rows]
            med[sampler] = statistics.median(values)
            rhat = max(r["rhat"] for r in rows)
            div = sum(r["divergences"] for r in rows)
            span = f" [{min(values):.3g}–{max(values):.3g}]" if len(values) > 1 else ""
            trees = [r.get("chains_on_the_tree") for r in rows]
            tree = f", {sum(trees)} chains on the tree" if sampler == "S3HMC" else ""
            tree = tree if None not in trees else ""  # runs saved before it was recorded
            cols.append(f"{med[sampler]:.3g}{span} (R-hat {rhat:.3f}, {div} div{tree})")
        ratios = [
            f"{med['S3HMC'] / med[s]:.3g}×" if med[s] > 0 else "–"
            for s in ("NUTS centred", "NUTS + LocScaleReparam(0)")
        ]
        role = FAMILIES[family][1]
        lines.append(f"| {family} ({role}) | " + " | ".join(cols + ratios) + " |")
    lines += ["", "Command:", "", f"    {command}"]
    return "\n".join(lines)


def write_results(
    text,
    path=HERE / "results.md",
    start=START,
    end=END,
    title="Hyperprior families: 50-D prior-only funnels",
):
    """Put ``text`` between the ``start`` and ``end`` markers of ``path``, adding a
    section called ``title`` once."""
    old = path.read_text()
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + f"\n\n## {title}\n\n"
        new += block + "\n"
    path.write_text(new)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:  # one (family, seed), in a child process
        family, seed, dim, chains, warmup, samples = argv[1:]
        result = run_cell(family, int(seed), int(dim), int(chains), int(warmup), int(samples))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 chains × 300 + 300, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help="update benchmarks/results.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.num_chains, args.num_warmup, args.num_samples = args.seeds[:1], 2, 300, 300
    cells = run(
        args.families, args.seeds, args.dim, args.num_chains, args.num_warmup, args.num_samples
    )
    command = shlex.join(["python", "benchmarks/families.py", *argv])
    if not args.quick:  # the runs, for reading back (the table keeps medians only)
        (HERE / "families.json").write_text(
            json.dumps({f"{f} | {s}": rows for (f, s), rows in cells.items()}, indent=1)
        )
    text = markdown(cells, args.families, args.seeds, command)
    print(text)
    if args.write and not args.quick:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
