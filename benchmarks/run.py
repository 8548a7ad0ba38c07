"""The performance suite: S3HMC against NumPyro's samplers on the models it exists for.

Every (model, sampler) pair runs in its own Python process, one after another,
on the same data, key and draws budget, so that each gets a clean compile cache
and its own peak memory; all of them are one run of this script, side by side on
the same machine. The tables and the figure go to ``benchmarks/results.md`` and
``benchmarks/results.png`` (``--quick``: a smaller budget and set, written to
``outputs/``).

    python benchmarks/run.py [--quick] [--models "BNN sine" ...] [--samplers S3HMC ...]

Samplers: S3HMC with its defaults (the splitting integrator) and with each
other integrator; NumPyro NUTS on the centred model; NUTS on the hand
non-centred model; NumPyro ``HMCGibbs`` (NUTS for the parameters, the exact
conjugate Gamma draw for the precisions). Every sampler is scored on the centred
model's quantities (the non-centred model records them as deterministic sites).
"""

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SAMPLERS = (
    "S3HMC",
    "S3HMC alba",
    "S3HMC implicit_alba",
    "NUTS centred",
    "NUTS non-centred",
    "HMCGibbs",
)
QUICK_MODELS = ("funnel 100-D", "BNN sine")
QUICK_SAMPLERS = ("S3HMC", "NUTS centred", "NUTS non-centred", "HMCGibbs")
BASELINE = "NUTS centred"
START, END = "<!-- results:start -->", "<!-- results:end -->"


# --- one cell, in a child process ----------------------------------------------------


def make_kernel(bench, sampler):
    from numpyro.infer import NUTS, HMCGibbs

    from numpyro_s3hmc import S3HMC

    if sampler == "S3HMC":
        return S3HMC(bench.centred)
    if sampler.startswith("S3HMC "):
        return S3HMC(bench.centred, integrator=sampler.split()[1])
    if sampler == "NUTS centred":
        return NUTS(bench.centred)
    if sampler == "NUTS non-centred":
        return NUTS(bench.noncentred)
    if sampler == "HMCGibbs":
        return HMCGibbs(NUTS(bench.centred), bench.gibbs_fn, list(bench.hyper))
    raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")


def budget(bench, quick):
    if quick:
        return {"num_chains": 2, "num_warmup": 300, "num_samples": 300}
    return {
        "num_chains": bench.num_chains,
        "num_warmup": bench.num_warmup,
        "num_samples": bench.num_samples,
    }


def memory_mb(key="VmHWM"):
    """This process's peak (VmHWM) or current (VmRSS) resident memory, in MB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024


# the columns of compare_samplers' table that a cell reports as they are
TABLE_COLUMNS = (
    "min ESS bulk",
    "min ESS tail",
    "ESS/s",
    "ESS/1k grads",
    "grads/draw",
    "max R-hat",
    "compile (s)",
    "sampling (s)",
    "wall (s)",
)


def run_cell(model_name, sampler, quick, seed) -> dict:
    import numpy as np
    from models import ALPHA, BETA, benchmarks

    import jax

    from numpyro_s3hmc import compare_samplers
    from numpyro_s3hmc._arviz import arviz, dataset
    from numpyro_s3hmc.compare import _model_sites

    bench = benchmarks()[model_name]
    settings = budget(bench, quick)
    kernel = make_kernel(bench, sampler)
    rss_before = memory_mb("VmRSS")
    table, idatas = compare_samplers(
        {sampler: kernel},
        *bench.args,
        rng_key=jax.random.PRNGKey(seed),
        progress_bar=False,
        # every sampler scored on the centred model's quantities
        var_names=_model_sites(bench.centred, bench.args, {}),
        **settings,
    )
    row = table.loc[sampler]
    posterior = dataset(idatas[sampler].posterior)
    out = {
        "model": model_name,
        "sampler": sampler,
        **settings,
        **{k: float(row[k]) for k in TABLE_COLUMNS},
        # from the draws: the table's per-hyperparameter columns are the kernel's own
        # model's, and the hand non-centred model has none
        "min ESS bulk hyper": float(
            min(np.min(arviz().ess(posterior[[h]], method="bulk")[h].values) for h in bench.hyper)
        ),
        "divergences": int(row["divergences"]),
        "peak memory (MB)": memory_mb(),
        "memory above start (MB)": memory_mb() - rss_before,
    }
    if model_name.startswith("funnel"):
        # the posterior is the prior: E[tau] = alpha / beta, checked against its MCSE
        draws = dataset(idatas[sampler].posterior)[["tau"]]
        mcse = float(arviz().mcse(draws)["tau"].values.squeeze())
        out["E[tau] z"] = (float(draws["tau"].mean()) - ALPHA / BETA) / mcse
    return out


def run_overhead(model_name) -> dict:
    from models import benchmarks
    from overhead import overhead

    bench = benchmarks()[model_name]
    return {"model": model_name, **overhead(bench.centred, bench.args)}


# --- the driver ----------------------------------------------------------------------


def child(argv) -> dict:
    """Run this script on one cell in a fresh process; its last line is the JSON."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def fmt(x, digits=3):
    if isinstance(x, str):
        return x
    if x is None or x != x:
        return "–"
    if isinstance(x, int) or abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


COLUMNS = (
    "min ESS bulk",
    "min ESS tail",
    "min ESS bulk hyper",
    "ESS/s",
    "ESS/1k grads",
    "grads/draw",
    "max R-hat",
    "divergences",
    "compile (s)",
    "sampling (s)",
    "peak memory (MB)",
)


def model_table(rows) -> str:
    cols = list(COLUMNS) + (["E[tau] z"] if any("E[tau] z" in r for r in rows) else [])
    base = next((r for r in rows if r["sampler"] == BASELINE and "error" not in r), None)
    lines = [
        "| sampler | " + " | ".join(cols) + " | ESS/s ÷ NUTS centred |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['sampler']} | failed: {r['error'].splitlines()[-1]} |")
            continue
        ratio = r["ESS/s"] / base["ESS/s"] if base else float("nan")
        lines.append(
            f"| {r['sampler']} | " + " | ".join(fmt(r.get(c)) for c in cols) + f" | {fmt(ratio)} |"
        )
    return "\n".join(lines)


def scaling(rows_by_model, sampler):
    """Slope of log(gradients per effective sample) against log(dimension)."""
    import numpy as np

    dims, costs = [], []
    for name, rows in rows_by_model.items():
        m = re.match(r"funnel (\d+)-D", name)
        r = next((r for r in rows if r["sampler"] == sampler and "error" not in r), None)
        if m and r:
            dims.append(int(m.group(1)))
            costs.append(1000 / r["ESS/1k grads"])
    if len(dims) < 2:
        return None, dims, costs
    return float(np.polyfit(np.log(dims), np.log(costs), 1)[0]), dims, costs


def targets(rows_by_model, overheads) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for each target of the suite that this run measured."""

    def ess_s(model, sampler):
        r = next((r for r in rows_by_model.get(model, []) if r["sampler"] == sampler), None)
        return None if r is None or "error" in r else r["ESS/s"]

    out = []

    def ratio(model, other, goal, label):
        a, b = ess_s(model, "S3HMC"), ess_s(model, other)
        if a is not None and b is not None:
            out.append((label, f"{a / b:.2f}×", "yes" if a / b >= goal else "**no**"))

    ratio("funnel 100-D", "NUTS centred", 10, "funnel 100-D: min-ESS/s ≥ 10× NUTS centred")
    ratio("BNN sine", "NUTS centred", 3, "BNN sine: min-ESS/s ≥ 3× NUTS centred")
    ratio("BNN sine", "NUTS non-centred", 1, "BNN sine: min-ESS/s ≥ NUTS non-centred")
    ratio("logistic", "NUTS centred", 1, "logistic: min-ESS/s ≥ NUTS centred")
    s3, _, _ = scaling(rows_by_model, "S3HMC")
    nc, _, _ = scaling(rows_by_model, "NUTS non-centred")
    if s3 is not None and nc is not None:
        out.append(
            (
                "funnel: gradients per ESS grow no faster with dimension than NUTS non-centred's",
                f"slope {s3:.2f} vs {nc:.2f}",
                "yes" if s3 <= nc + 0.1 else "**no**",
            )
        )
    for o in overheads:
        if "error" not in o:
            out.append(
                (
                    f"{o['model']}: splitting step ≤ 1.3 gradients",
                    f"{o['splitting']:.2f}",
                    "yes" if o["splitting"] <= 1.3 else "**no**",
                )
            )
    return out


def provenance(rows_by_model, measured):
    """When the rows that ``measured`` (this run) did not re-measure were measured, one
    clause per earlier run, naming its rows; None where this run measured every row."""
    runs = {}
    for rows in rows_by_model.values():
        for r in rows:
            if r.get("measured", measured) != measured:
                runs.setdefault(r["measured"], []).append(f"{r['model']} / {r['sampler']}")
    if not runs:
        return None

    def rows(names):  # a few rows by name, many by their number
        return ", ".join(names) if len(names) <= 4 else f"{len(names)} rows"

    return "; ".join(f"{when} ({rows(names)})" for when, names in runs.items())


def report(rows_by_model, overheads, args, seconds, command, earlier=None) -> str:
    """The generated part of results.md; ``earlier``: when the rows this run did not
    re-measure were (:func:`provenance`; a run of a subset is merged into the saved
    one)."""
    import jax

    import numpyro

    what = "Measured"
    if earlier is not None:  # a subset merged into the saved run
        on = f" on {', '.join(args.models)}" if args.models else ""
        what = f"The rows of {', '.join(args.samplers or SAMPLERS)}{on} re-measured"
    parts = [
        f"{what} {time.strftime('%Y-%m-%d')} by `{command}`"
        + f" in {seconds / 60:.0f} min on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), JAX {jax.__version__}, "
        f"NumPyro {numpyro.__version__}, seed {args.seed}. Chains run sequentially."
        + ("" if earlier is None else f" The other rows: measured {earlier}."),
        "",
        "Columns: min bulk and tail ESS over every element of every latent site of the "
        "centred model; `min ESS bulk hyper` over the precisions only; ESS/s divides by "
        "the sampling time after compilation (compile time, warmup included, kept apart); "
        "ESS per 1,000 gradient evaluations of the potential after warmup (S3HMC's "
        "`num_grad_evals`, NUTS's `num_steps`); peak memory is the process's resident "
        "high-water mark (the JAX runtime included). `E[tau] z`: the funnel's posterior "
        "mean of τ minus its exact value 2, over its Monte Carlo standard error.",
        "",
        "### Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    parts += [f"| {t} | {m} | {ok} |" for t, m, ok in targets(rows_by_model, overheads)]
    for name, rows in rows_by_model.items():
        first = next((r for r in rows if "error" not in r), {})
        parts += [
            "",
            f"### {name}",
            "",
            f"{first.get('num_chains', '?')} chains × {first.get('num_samples', '?')} draws "
            f"after {first.get('num_warmup', '?')} warmup.",
            "",
            model_table(rows),
        ]
    for sampler in ("S3HMC", "NUTS centred", "NUTS non-centred"):
        slope, dims, costs = scaling(rows_by_model, sampler)
        if slope is not None:
            if sampler == "S3HMC":
                parts += ["", "### Funnel: gradients per effective sample against dimension", ""]
            pts = ", ".join(f"{d}-D {c:,.0f}" for d, c in zip(dims, costs))
            parts.append(f"- {sampler}: {pts}; log-log slope {slope:.2f}")
    if overheads:
        parts += [
            "",
            "### Overhead: one integrator step ÷ the gradients it evaluates",
            "",
            "| model | one gradient | splitting | alba | implicit_alba |",
            "|---|---|---|---|---|",
        ]
        for o in overheads:
            if "error" in o:
                parts.append(f"| {o['model']} | failed: {o['error'].splitlines()[-1]} |")
                continue
            parts.append(
                f"| {o['model']} | {1e6 * o['gradient (s)']:.1f} µs | {o['splitting']:.2f} "
                f"| {o['alba']:.2f} | {o['implicit_alba']:.2f} |"
            )
    return "\n".join(parts)


def figure(rows_by_model, path):
    import numpy as np
    from matplotlib.figure import Figure

    models = list(rows_by_model)
    samplers = [
        s for s in SAMPLERS if any(r["sampler"] == s for v in rows_by_model.values() for r in v)
    ]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[2, 2, 1.2])
    width = 0.8 / len(samplers)
    for ax, col, title in (
        (axes[0], "ESS/s", "min bulk ESS per second ÷ NUTS centred"),
        (axes[1], "ESS/1k grads", "min bulk ESS per gradient ÷ NUTS centred"),
    ):
        for j, s in enumerate(samplers):
            values = []
            for m in models:
                rows = {r["sampler"]: r for r in rows_by_model[m] if "error" not in r}
                ok = s in rows and BASELINE in rows
                values.append(rows[s][col] / rows[BASELINE][col] if ok else np.nan)
            ax.bar(np.arange(len(models)) + j * width, values, width, label=s, color=f"C{j}")
        ax.axhline(1.0, color="k", linewidth=0.7)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=20)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    for j, s in enumerate(samplers):
        _, dims, costs = scaling(rows_by_model, s)
        if len(dims) > 1:
            axes[2].plot(dims, costs, "o-", label=s, color=f"C{j}")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("funnel dimension")
    axes[2].set_ylabel("gradients per effective sample")
    axes[2].set_title("cost as the funnel grows")
    fig.savefig(path, dpi=110)


def write_report(path: Path, text: str):
    """Replace the generated part of ``path``, keeping any text written around it."""
    old = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in old:
        old = f"{old.rstrip()}\n\n{START}\n{END}\n"
    head, rest = old.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budget, two models")
    p.add_argument("--models", nargs="+", help="a subset of the models, by name")
    p.add_argument("--samplers", nargs="+", help=f"a subset of {SAMPLERS}")
    p.add_argument("--no-overhead", action="store_true", help="skip the overhead timings")
    p.add_argument("--out", type=Path, help="the report (default benchmarks/results.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell", nargs=2, metavar=("MODEL", "SAMPLER"), help=argparse.SUPPRESS)
    p.add_argument("--overhead-of", metavar="MODEL", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(*args.cell, args.quick, args.seed)))
        return
    if args.overhead_of:
        print(json.dumps(run_overhead(args.overhead_of)))
        return

    from models import benchmarks

    models = args.models or (QUICK_MODELS if args.quick else list(benchmarks()))
    samplers = args.samplers or (QUICK_SAMPLERS if args.quick else SAMPLERS)
    out = args.out or (Path("outputs/results-quick.md") if args.quick else HERE / "results.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = (["--quick"] if args.quick else []) + ["--seed", str(args.seed)]
    t0 = time.time()
    rows_by_model, overheads = {}, []
    for m in models:
        rows_by_model[m] = []
        for s in samplers:
            t = time.time()
            row = child(["--cell", m, s, *flags])
            rows_by_model[m].append({"model": m, "sampler": s, **row})
            status = row.get("error") or (
                f"min ESS bulk {row['min ESS bulk']:.0f}, {row['ESS/s']:.3g} ESS/s, "
                f"{row['ESS/1k grads']:.3g} ESS/1k grads, R-hat {row['max R-hat']:.3f}"
            )
            print(f"[{time.time() - t0:6.0f} s] {m} / {s} ({time.time() - t:.0f} s): {status}")
        if not args.no_overhead:
            o = child(["--overhead-of", m])
            overheads.append({"model": m, **o})
            print(f"[{time.time() - t0:6.0f} s] {m} / overhead: {o}")
    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    measured = f"{time.strftime('%Y-%m-%d')} by `{command}`"
    for rows in rows_by_model.values():
        for r in rows:
            r["measured"] = measured
    earlier = None
    if not args.quick and out.with_suffix(".json").exists() and (args.models or args.samplers):
        # a subset: merged into the saved run, whose other rows keep their date
        saved = json.loads(out.with_suffix(".json").read_text())
        for m, rows in saved["rows"].items():
            new = {r["sampler"]: r for r in rows_by_model.get(m, [])}
            # each saved row keeps the run that measured it (older files: the file's)
            kept = {
                r["sampler"]: {"measured": saved.get("measured", "an earlier run"), **r}
                for r in rows
                if r["sampler"] not in new
            }
            merged = {**kept, **new}
            rows_by_model[m] = [merged[s] for s in SAMPLERS if s in merged]
        earlier = provenance(rows_by_model, measured)
        done = {o["model"] for o in overheads}
        overheads = [o for o in saved["overhead"] if o["model"] not in done] + overheads
    (out.with_suffix(".json")).write_text(
        json.dumps({"rows": rows_by_model, "overhead": overheads, "measured": measured}, indent=1)
    )
    text = report(rows_by_model, overheads, args, time.time() - t0, command, earlier)
    figure(rows_by_model, out.with_suffix(".png"))
    text += f"\n\n![S3HMC and NumPyro's samplers, relative to NUTS centred]({out.with_suffix('.png').name})"
    write_report(out, text)
    print(text)


if __name__ == "__main__":
    main()
