"""Compile and end-to-end time of each demo sampler, each alone in a fresh process.

In one process the first sampler also pays JAX's own start-up (its first
compilations, the model's eager operations), which makes whichever runs first look
slower; ``compare_samplers`` initialises each model once untimed to hide most of
that. Here every sampler runs alone in a new Python process, so each pays all of
it, as a user's script does: ``compile (s)`` is what JAX reports compiling during
``MCMC.run`` (``numpyro_s3hmc.compare``), ``wall (s)`` the whole run, and
``process (s)`` the process from start to exit (imports included). Each sampler
runs ``--repeats`` times; the table shows the median. S3HMC's pilot chooses centred or
non-centred coordinates, which changes the program it compiles; the choice of each
repeat is printed below the table. ``S3HMC static`` is what a user who minds compile
time can pass (``coordinates="noncentred", trajectory="static"``: no pilot's program, no
no-U-turn tree), and ``ESS/1k grads`` what each run's draws are worth (min bulk ESS
per 1,000 sampling gradients; the demo's seed, so the same in every repeat).

    python benchmarks/compile_time.py              # the demo's defaults: 2 chains, 1000 + 1000
    python benchmarks/compile_time.py --repeats 1 --num-samples 200 --num-warmup 200
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

SAMPLERS = ("S3HMC", "NUTS", "NUTS+reparam", "S3HMC static")

_CHILD = """
import json, sys, jax
from numpyro.infer import NUTS
from numpyro_s3hmc import S3HMC, compare_samplers
from numpyro_s3hmc.compare import _model_sites
from numpyro_s3hmc.demo import load_data, model, noncentred_model

name, warmup, samples, chains = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kernel = {"S3HMC": lambda: S3HMC(model), "NUTS": lambda: NUTS(model),
          "NUTS+reparam": lambda: NUTS(noncentred_model()),
          "S3HMC static": lambda: S3HMC(model, coordinates="noncentred", trajectory="static"),
          }[name]()
x, group, num_groups, y = load_data()
latent = _model_sites(model, (x, group, num_groups), {"y": y})
table, _ = compare_samplers({name: kernel}, x, group, num_groups, y=y, num_warmup=warmup,
                            num_samples=samples, num_chains=chains, chain_method="sequential",
                            rng_key=jax.random.PRNGKey(0), progress_bar=False, var_names=latent)
row = table.loc[name]
out = {k: float(row[k]) for k in ("wall (s)", "compile (s)", "sampling (s)", "ESS/1k grads")}
# S3HMC's pilot picks the coordinates, and so which sampler program is compiled
out["coordinates"] = getattr(kernel, "coordinates", None)
print(json.dumps(out))
"""


def run_one(name: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name]
        + [str(v) for v in (args.num_warmup, args.num_samples, args.num_chains)],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process (s)"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = {}
    for _ in range(args.repeats):
        for name in SAMPLERS:  # interleaved, so that drifting load hits every sampler
            rows.setdefault(name, []).append(run_one(name, args))
    columns = ("compile (s)", "wall (s)", "sampling (s)", "process (s)", "ESS/1k grads")
    print(f"| sampler | {' | '.join(columns)} | compile / NUTS's |")
    print("|---" * (len(columns) + 2) + "|")
    median = {
        n: {c: statistics.median(r[c] for r in rs) for c in columns} for n, rs in rows.items()
    }
    for name, m in median.items():
        ratio = m["compile (s)"] / median["NUTS"]["compile (s)"]
        print(f"| {name} | " + " | ".join(f"{m[c]:.2f}" for c in columns) + f" | {ratio:.2f} |")
    chosen = [r["coordinates"] for r in rows.get("S3HMC", []) if r.get("coordinates")]
    if chosen:  # the compile time depends on them: a centred or a non-centred program
        print(f"\nS3HMC's coordinates, per repeat: {chosen}")


if __name__ == "__main__":
    main()
