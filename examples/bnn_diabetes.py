"""Example: a heteroscedastic Bayesian neural network on the diabetes data, S3HMC and NUTS
=========================================================================================

The TFP BNN guide's Boston-housing workflow, on scikit-learn's bundled diabetes
data (442 patients, ten standardised measurements, disease progression after
one year; no download):

1. a random train/test split (80/20), inputs and target standardised with the
   training statistics;
2. a [10, 16, 2] tanh network whose two outputs are the mean and the log
   variance of a Gaussian (the *heteroscedastic* head), with a
   ``Gamma(2, 1)`` precision for the kernel and another for the bias of each
   layer (:func:`numpyro_s3hmc.bnn.hierarchical_bnn`);
3. the **MAP** network (Adam on the log joint, :func:`~numpyro_s3hmc.bnn.map_init`),
   whose only uncertainty is the aleatoric variance it predicts;
4. the **BNN**: S3HMC from the MAP point, and NUTS on the same centred model from
   the same point, through :func:`numpyro_s3hmc.compare_samplers` (min ESS,
   ESS/s, R-hat, divergences).

For each of MAP, S3HMC and NUTS the test set gives the RMSE of the predictive
mean, the mean log predictive density per point (both in the target's units)
and the coverage of the central 68% and 95% predictive intervals. A BNN's
predictive distribution is the mixture over draws of N(mean_s, var_s); its
intervals are that mixture's quantiles (found by bisection on its CDF), and its
variance splits into aleatoric (mean of var_s) and epistemic (variance of
mean_s) parts (:func:`~numpyro_s3hmc.bnn.regression_summary`).

Writes to ``--output-dir``: ``diabetes_predictions.png`` (predicted against
true progression with ±1 sd error bars, aleatoric and total),
``diabetes_comparison.png`` (:func:`~numpyro_s3hmc.plot_comparison`) and
``bnn_diabetes.json``.
"""

import argparse
import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from numpyro.infer import NUTS, init_to_value  # noqa: E402
from numpyro.infer.util import constrain_fn  # noqa: E402

from numpyro_s3hmc import S3HMC, compare_samplers, plot_comparison  # noqa: E402
from numpyro_s3hmc.bnn import hierarchical_bnn, map_init, predict, regression_summary  # noqa: E402

LEVELS = (0.68, 0.95)


class MLP(nn.Module):
    """A tanh multilayer perceptron; two outputs: mean and log variance."""

    hidden: Sequence[int] = (16,)
    out: int = 2

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.tanh(nn.Dense(h)(x))
        return nn.Dense(self.out)(x)


def load_data(test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Standardised train/test split of scikit-learn's diabetes data.

    Returns a dict with ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (standardised with the training mean and sd) and ``y_mean``, ``y_sd``.
    """
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = idx[:n_test], idx[n_test:]
    x_mean, x_sd = x[train].mean(0), x[train].std(0)
    y_mean, y_sd = y[train].mean(), y[train].std()

    def xs(i):
        return jnp.asarray((x[i] - x_mean) / x_sd, jnp.float32)

    def ys(i):
        return jnp.asarray((y[i] - y_mean) / y_sd, jnp.float32)

    return {
        "x_train": xs(train),
        "y_train": ys(train),
        "x_test": xs(test),
        "y_test": ys(test),
        "y_mean": float(y_mean),
        "y_sd": float(y_sd),
    }


def make_model(hidden: Sequence[int], num_features: int):
    """The heteroscedastic hierarchical BNN."""
    return hierarchical_bnn(
        MLP(hidden=tuple(hidden)), (1, num_features), likelihood="heteroscedastic"
    )


def _mixture_cdf(q, means, sds):
    return jnp.mean(jax.scipy.stats.norm.cdf((q[None] - means) / sds), 0)


@jax.jit
def _bisect(means, sds, prob):
    lo = jnp.min(means - 6 * sds, 0)
    hi = jnp.max(means + 6 * sds, 0)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = _mixture_cdf(mid, means, sds) < prob
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
    return 0.5 * (lo + hi)


def mixture_quantile(means, sds, prob: float) -> np.ndarray:
    """Quantile ``prob`` of the equal-weight Gaussian mixture over draws, per point.

    ``means``, ``sds``: ``(draws, N)``. Sixty bisection steps on the mixture
    CDF, which is monotone, between bounds that bracket every component's
    ±6 sd: an interval about 1e-17 of its start, float32 resolution.
    """
    means = jnp.asarray(means, jnp.float32)
    sds = jnp.asarray(sds, jnp.float32)
    return np.asarray(_bisect(means, sds, jnp.float32(prob)))


def evaluate(means, variances, y, y_sd: float) -> dict:
    """Test metrics of a predictive mixture, in the target's units.

    Parameters
    ----------
    means, variances : ``(draws, N)`` per-draw predictive means and variances
        (standardised units); one draw for the MAP network.
    y : ``(N,)`` standardised targets.
    y_sd : the target's training sd, to return to its units.
    """
    means = np.asarray(means, np.float64)
    variances = np.asarray(variances, np.float64)
    y = np.asarray(y, np.float64)
    s = regression_summary(means, variances)
    # log of the mixture density, averaged over points, in the target's units
    logp = -0.5 * (np.log(2 * np.pi * variances) + (y[None] - means) ** 2 / variances)
    m = logp.max(0)
    log_pred = m + np.log(np.mean(np.exp(logp - m), 0)) - np.log(y_sd)
    sds = np.sqrt(variances)
    out = {
        "rmse": float(y_sd * np.sqrt(np.mean((s["mean"] - y) ** 2))),
        "log_likelihood_per_point": float(log_pred.mean()),
        "mean_aleatoric_sd": float(y_sd * np.sqrt(s["aleatoric"]).mean()),
        "mean_epistemic_sd": float(y_sd * np.sqrt(s["epistemic"]).mean()),
    }
    for level in LEVELS:
        lo = mixture_quantile(means, sds, (1 - level) / 2)
        hi = mixture_quantile(means, sds, (1 + level) / 2)
        out[f"coverage_{round(100 * level)}"] = float(np.mean((y >= lo) & (y <= hi)))
    return out, s


def rhat_or_none(value) -> float | None:
    """A table's R-hat as a JSON number, or None (null) where it is undefined: with
    one chain the table has NaN (ArviZ needs two chains to compare)."""
    return None if pd.isna(value) else float(value)


def posterior_draws(idata, sites) -> dict:
    """``{site: (draws, ...)}`` of each model site, chains pooled, from a run of
    ArviZ 0.x (InferenceData) or 1.x (DataTree).

    A DataTree cannot name a variable with "/", so with ArviZ 1.x the flax sites
    (``net/Dense_0.kernel``) are in the posterior as ``net.Dense_0.kernel``; the
    draws go back under the model's names, which ``predict`` conditions on (it
    would draw a site it does not find from its prior, silently).
    """
    names = set(idata.posterior.data_vars)
    post = {}
    for site in sites:
        found = [n for n in (site, site.replace("/", ".")) if n in names]
        if not found:
            raise KeyError(f"the posterior has no variable for the site {site!r}")
        v = np.asarray(idata.posterior[found[0]])  # (chain, draw, ...)
        post[site] = v.reshape(-1, *v.shape[2:])
    return post


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_data(seed=args.seed)
    x, y, xt, yt, y_sd = (data[k] for k in ("x_train", "y_train", "x_test", "y_test", "y_sd"))
    model = make_model(args.hidden, x.shape[1])
    key_map, key_mcmc = jax.random.split(jax.random.PRNGKey(args.seed))

    # 1. MAP network (also the start of both samplers)
    z_map = map_init(model, x, y, num_steps=args.map_steps, rng_key=key_map)
    point = constrain_fn(model, (x, y), {}, z_map)
    map_pred = predict(model, {k: v[None] for k, v in point.items()}, xt)

    # 2. S3HMC and NUTS on the same centred model, from the MAP point
    init = init_to_value(values=point)
    kernels = {
        # centred and static, unlike the other BNN examples: on this network's every
        # weight the defaults mixed more slowly (seed 0, 2 chains x 500: min ESS 6 and
        # max R-hat 1.31 against 18 and 1.12; the precisions' min ESS 27 against 37)
        "S3HMC": S3HMC(model, init_strategy=init, coordinates="centred", trajectory="static"),
        "NUTS": NUTS(model, init_strategy=init),
    }
    kernels = {k: v for k, v in kernels.items() if k in args.samplers}
    table, idatas = compare_samplers(
        kernels,
        x,
        y,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        rng_key=key_mcmc,
        progress_bar=False,
    )
    print(table.T.to_string(na_rep="n/a"))  # n/a: R-hat of one chain

    results, summaries = {}, {}
    results["MAP"], summaries["MAP"] = evaluate(map_pred["mean"], map_pred["var"], yt, y_sd)
    for name, idata in idatas.items():
        post = posterior_draws(idata, point)
        pred = predict(model, post, xt)
        results[name], summaries[name] = evaluate(pred["mean"], pred["var"], yt, y_sd)
        row = table.loc[name]
        results[name]["sampler"] = {
            "min_ess_bulk": float(row["min ESS bulk"]),
            "min_ess_tail": float(row["min ESS tail"]),
            "ess_per_s": float(row["ESS/s"]),
            "ess_per_1k_grads": float(row["ESS/1k grads"]),
            "grads_per_draw": float(row["grads/draw"]),
            "max_rhat": rhat_or_none(row["max R-hat"]),
            "divergences": float(row["divergences"]),
            "wall_s": float(row["wall (s)"]),
            "sampling_s": float(row["sampling (s)"]),
            "precision_ess_bulk": {
                c.removeprefix("ESS bulk "): float(row[c])
                for c in table.columns
                if c.startswith("ESS bulk ")
            },
        }
    results["data"] = {
        "n_train": int(x.shape[0]),
        "n_test": int(xt.shape[0]),
        "target_sd": y_sd,
        "rmse_of_predicting_the_training_mean": float(y_sd * np.sqrt(np.mean(np.asarray(yt) ** 2))),
    }
    results["settings"] = vars(args)
    print(json.dumps({k: results[k] for k in summaries}, indent=1))
    with open(os.path.join(args.output_dir, "bnn_diabetes.json"), "w") as f:
        json.dump(results, f, indent=2)

    plot_comparison(table, idatas).savefig(
        os.path.join(args.output_dir, "diabetes_comparison.png"), dpi=80
    )
    plt.close("all")
    plot_predictions(
        summaries, results, data, os.path.join(args.output_dir, "diabetes_predictions.png")
    )
    return results


def plot_predictions(summaries: dict, results: dict, data: dict, path: str) -> None:
    """Predicted against true progression, ±1 sd error bars (aleatoric, total)."""
    y_mean, y_sd = data["y_mean"], data["y_sd"]
    truth = y_mean + y_sd * np.asarray(data["y_test"])
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.3 * len(summaries), 4.3), sharey=True)
    lims = (truth.min() - 40, truth.max() + 40)
    for ax, (name, s) in zip(axes, summaries.items(), strict=True):
        mean = y_mean + y_sd * s["mean"]
        total = y_sd * np.sqrt(s["total"])
        alea = y_sd * np.sqrt(s["aleatoric"])
        ax.errorbar(truth, mean, yerr=total, fmt="none", ecolor="C1", lw=3.5, alpha=0.6)
        ax.errorbar(truth, mean, yerr=alea, fmt="o", ms=3, color="C0", ecolor="C0", lw=0.9)
        ax.plot(lims, lims, "k--", lw=0.8)
        r = results[name]
        ax.set_title(
            f"{name}: RMSE {r['rmse']:.1f}, log-lik {r['log_likelihood_per_point']:.2f}\n"
            f"coverage 68%: {r['coverage_68']:.2f}, 95%: {r['coverage_95']:.2f}; "
            f"mean sd: alea. {r['mean_aleatoric_sd']:.0f}, epis. {r['mean_epistemic_sd']:.0f}",
            fontsize=9,
        )
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_xlabel("true progression (test set)")
    axes[0].set_ylabel("predicted mean ± 1 sd")
    axes[0].plot([], [], color="C0", lw=0.9, label="aleatoric sd")
    axes[0].plot([], [], color="C1", lw=3.5, alpha=0.6, label="total sd (aleatoric + epistemic)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Heteroscedastic BNN on the diabetes data: MAP, S3HMC, NUTS"
    )
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=[16])
    parser.add_argument("--map-steps", type=int, default=3000)
    parser.add_argument(
        "--samplers",
        nargs="+",
        choices=["S3HMC", "NUTS"],
        default=["S3HMC", "NUTS"],
        help="the BNN samplers to run (NUTS is the baseline)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="bnn_diabetes_output")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
