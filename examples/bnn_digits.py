"""Example: out-of-distribution uncertainty of a Bayesian neural network on 8×8 digits
=================================================================================

The S3HMC paper's §2.2 (its Figure 1) at CPU scale, on scikit-learn's bundled
``load_digits`` (1,797 8×8 images, no download):

- a small tanh network [64, 16, 5] (pixels scaled to [0, 1]) is trained on the
  digits 0–4 only (a random 60% of their images);
- **in distribution**: the held-out images of digits 0–4;
- **out of distribution**: every image of the unseen digits 5–9, and images of
  uniform pixel noise.

Three classifiers with the same architecture:

1. **S3HMC BNN**: :func:`numpyro_s3hmc.bnn.hierarchical_bnn` with a
   ``Gamma(2, 1)`` precision for the kernel and another for the bias of each
   layer and a categorical likelihood, sampled by S3HMC from a MAP start;
2. **deterministic**: the network trained by Adam (optax) on the cross-entropy
   with a small weight decay;
3. **MC dropout** (Gal & Ghahramani 2016): the same with dropout on the hidden
   layer, kept on at test time and averaged over ``--dropout-samples`` masks.

For each: the in-distribution test accuracy and log-likelihood, and the
predictive entropy H[E p(y | x)] (nats; at most log 5 ≈ 1.61) of every test,
unseen-digit and noise image. A model that knows what it does not know gives
the out-of-distribution images high entropy: ``auroc_*`` is the probability
that an out-of-distribution image has a higher entropy than an
in-distribution one (0.5 = no separation, 1 = perfect).

Writes to ``--output-dir``: ``digits_entropy.png`` (histograms of the
predictive entropy in and out of distribution for each classifier, the paper's
Figure 1), ``digits_precisions.png`` (S3HMC traces of the layer precisions) and
``bnn_digits.json``.
"""

import argparse
import json
import os
import time
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from numpyro.infer import MCMC  # noqa: E402

from numpyro_s3hmc import S3HMC  # noqa: E402
from numpyro_s3hmc._arviz import arviz  # noqa: E402
from numpyro_s3hmc.bnn import (  # noqa: E402
    classification_summary,
    hierarchical_bnn,
    map_init,
    predict,
)

NUM_CLASSES = 5  # digits 0-4 are in distribution


class MLP(nn.Module):
    """A tanh multilayer perceptron with optional dropout after each hidden layer."""

    hidden: Sequence[int] = (16,)
    out: int = NUM_CLASSES
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        for h in self.hidden:
            x = nn.tanh(nn.Dense(h)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        return nn.Dense(self.out)(x)


def load_data(train_fraction: float = 0.6, num_noise: int = 300, seed: int = 0) -> dict:
    """Digits 0-4 split into train/test; digits 5-9 and noise images as OOD.

    Pixels are scaled to [0, 1]. Returns ``x_train``, ``y_train``, ``x_test``,
    ``y_test``, ``x_unseen`` (digits 5-9) and ``x_noise`` (uniform noise).
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(seed)
    inside = np.flatnonzero(y < NUM_CLASSES)
    inside = rng.permutation(inside)
    n_train = int(round(train_fraction * len(inside)))
    train, test = inside[:n_train], inside[n_train:]
    unseen = np.flatnonzero(y >= NUM_CLASSES)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return {
        "x_train": f32(x[train]),
        "y_train": jnp.asarray(y[train], jnp.int32),
        "x_test": f32(x[test]),
        "y_test": jnp.asarray(y[test], jnp.int32),
        "x_unseen": f32(x[unseen]),
        "x_noise": f32(rng.uniform(0.0, 1.0, (num_noise, x.shape[1]))),
    }


def train_sgd(
    module: MLP, x, y, *, steps: int, learning_rate: float, weight_decay: float, seed: int
):
    """Full-batch AdamW on the cross-entropy; returns the parameters."""
    key_init, key_drop = jax.random.split(jax.random.PRNGKey(seed))
    params = module.init(key_init, x[:1])["params"]
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    state = opt.init(params)

    def loss(p, key):
        logits = module.apply({"params": p}, x, deterministic=False, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(carry, key):
        p, s = carry
        g = jax.grad(loss)(p, key)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, state), jax.random.split(key_drop, steps))
    return params


def sgd_probs(module: MLP, params, x, *, num_masks: int = 1, seed: int = 0) -> np.ndarray:
    """``(masks, N, K)`` class probabilities; dropout on when ``num_masks > 1``."""
    if num_masks == 1:
        return np.asarray(jax.nn.softmax(module.apply({"params": params}, x), -1))[None]

    def one(key):
        logits = module.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})
        return jax.nn.softmax(logits, -1)

    return np.asarray(jax.vmap(one)(jax.random.split(jax.random.PRNGKey(seed), num_masks)))


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counting one half."""
    scores = np.concatenate([inside, outside])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def evaluate(probs: dict, y_test) -> dict:
    """Accuracy, log-likelihood and entropies from ``(draws, N, K)`` probabilities per set."""
    s = {k: classification_summary(p) for k, p in probs.items()}
    y = np.asarray(y_test)
    p_true = s["test"]["probs"][np.arange(len(y)), y]
    out = {
        "test_accuracy": float(np.mean(s["test"]["probs"].argmax(-1) == y)),
        "test_log_likelihood_per_point": float(np.mean(np.log(np.maximum(p_true, 1e-12)))),
    }
    for k in probs:
        out[f"mean_entropy_{k}"] = float(s[k]["entropy"].mean())
        out[f"mean_mutual_information_{k}"] = float(s[k]["mutual_information"].mean())
    out["auroc_unseen_digits"] = auroc(s["test"]["entropy"], s["unseen"]["entropy"])
    out["auroc_noise"] = auroc(s["test"]["entropy"], s["noise"]["entropy"])
    return out, {k: v["entropy"] for k, v in s.items()}


def run_s3hmc(data: dict, args):
    """MAP start, then S3HMC on the hierarchical BNN; returns (model, mcmc, seconds)."""
    x, y = data["x_train"], data["y_train"]
    model = hierarchical_bnn(
        MLP(hidden=tuple(args.hidden)), (1, x.shape[1]), likelihood="classification"
    )
    key_map, key_mcmc = jax.random.split(jax.random.PRNGKey(args.seed))
    t0 = time.time()
    z0 = map_init(
        model,
        x,
        y,
        num_steps=args.map_steps,
        rng_key=key_map,
        num_chains=args.num_chains,
        jitter=0.01,
    )
    mcmc = MCMC(
        # the defaults: the pilot chooses each layer's coordinates, warmup the
        # trajectory scheme (docs/design.md §3.2 and §6.2); pinned to
        # coordinates="centred", trajectory="static", the weights mixed 4x slower
        # (seed 0: min ESS 7.4 against 30.8, max R-hat 1.25 against 1.075)
        S3HMC(model),
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(key_mcmc, x, y, init_params=z0, extra_fields=("num_grad_evals", "diverging"))
    jax.block_until_ready(mcmc.get_samples())  # JAX dispatches asynchronously
    return model, mcmc, time.time() - t0


def s3hmc_diagnostics(mcmc, num_chains: int) -> dict:
    """Bulk ESS and R-hat (ArviZ, rank-normalised) of every weight and precision.

    ArviZ, not ``numpyro.diagnostics``: the kernel weights of the pixels that are
    blank in every training image see only their prior, where S3HMC's
    trajectories are antithetic, and NumPyro's ESS estimate of such a chain can
    come out negative.
    """
    az = arviz()  # ArviZ 0.x or 1.x, without 0.23's FutureWarning banner on import
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields()
    # ArviZ 1.x keeps datasets in an xarray DataTree, whose variable names cannot
    # hold "/": the flax sites (net/Dense_0.kernel) are renamed net.Dense_0.kernel
    ds = az.convert_to_dataset({k.replace("/", "."): np.asarray(v) for k, v in samples.items()})
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant draws in tiny runs
        ess = az.ess(ds, method="bulk")
        rhat = az.rhat(ds) if num_chains > 1 else None
    all_ess = np.concatenate([np.ravel(ess[k].values) for k in ess.data_vars])
    taus = [k for k in ds.data_vars if k.startswith("tau")]
    out = {
        "min_ess_bulk_all_weights_and_precisions": float(np.nanmin(all_ess)),
        "median_ess_bulk": float(np.nanmedian(all_ess)),
        "max_rhat": None,  # null (JSON) with one chain: R-hat compares chains
        "grads_per_draw": float(np.mean(extra["num_grad_evals"])),
        "divergences": int(np.sum(extra["diverging"])),
        # what the defaults chose: each layer's coordinates (the pilot), each chain's
        # trajectory scheme (warmup; the tree where true)
        "coordinates": mcmc.sampler.coordinates,
        "no_u_turn_tree_by_chain": np.atleast_1d(mcmc.last_state.metric_state.use_tree).tolist(),
        "precisions": {
            k: {"mean": float(ds[k].mean()), "ess_bulk": float(ess[k]), "r_hat": None} for k in taus
        },
    }
    if rhat is not None:
        # NaN: an element whose draws are all equal (tiny runs); the max ignores it
        all_rhat = np.concatenate([np.ravel(rhat[k].values) for k in rhat.data_vars])
        known = all_rhat[~np.isnan(all_rhat)]
        out["max_rhat"] = float(known.max()) if known.size else None
        for k in taus:
            r = float(rhat[k])
            out["precisions"][k]["r_hat"] = None if np.isnan(r) else r
    return out


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_data(seed=args.seed)
    sets = {"test": data["x_test"], "unseen": data["x_unseen"], "noise": data["x_noise"]}
    results, entropies, probs = {}, {}, {}

    # 1. S3HMC BNN
    model, mcmc, seconds = run_s3hmc(data, args)
    samples = mcmc.get_samples()
    every = np.asarray(predict(model, samples, jnp.concatenate(list(sets.values())))["probs"])
    ends = np.cumsum([len(v) for v in sets.values()])[:-1]
    probs["S3HMC BNN"] = dict(zip(sets, np.split(every, ends, axis=1), strict=True))
    results["S3HMC BNN"], entropies["S3HMC BNN"] = evaluate(probs["S3HMC BNN"], data["y_test"])
    results["S3HMC BNN"]["sampler"] = s3hmc_diagnostics(mcmc, args.num_chains)
    results["S3HMC BNN"]["seconds_map_and_sampling"] = seconds

    # 2. deterministic network and 3. MC dropout, trained by Adam
    for name, rate, masks in (
        ("deterministic", 0.0, 1),
        ("MC dropout", args.dropout, args.dropout_samples),
    ):
        module = MLP(hidden=tuple(args.hidden), dropout=rate)
        t0 = time.time()
        params = train_sgd(
            module,
            data["x_train"],
            data["y_train"],
            steps=args.sgd_steps,
            learning_rate=1e-2,
            weight_decay=1e-3,
            seed=args.seed,
        )
        every = sgd_probs(
            module,
            params,
            jnp.concatenate(list(sets.values())),
            num_masks=masks,
            seed=args.seed + 1,
        )
        probs[name] = dict(zip(sets, np.split(every, ends, axis=1), strict=True))
        results[name], entropies[name] = evaluate(probs[name], data["y_test"])
        results[name]["seconds"] = time.time() - t0

    results["data"] = {k: int(v.shape[0]) for k, v in data.items() if k.startswith("x_")}
    results["settings"] = vars(args)
    print(json.dumps(results, indent=1))
    with open(os.path.join(args.output_dir, "bnn_digits.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_entropies(entropies, results, os.path.join(args.output_dir, "digits_entropy.png"))
    plot_precisions(mcmc, os.path.join(args.output_dir, "digits_precisions.png"))
    return results


LABELS = {
    "test": "digits 0-4, held out (in distribution)",
    "unseen": "digits 5-9 (never seen)",
    "noise": "uniform noise images",
}


def plot_entropies(entropies: dict, results: dict, path: str) -> None:
    """Histograms of predictive entropy per classifier, in and out of distribution."""
    fig, axes = plt.subplots(1, len(entropies), figsize=(4.2 * len(entropies), 3.4), sharey=True)
    bins = np.linspace(0.0, np.log(NUM_CLASSES), 31)
    for ax, (name, ent) in zip(axes, entropies.items(), strict=True):
        for (k, e), c in zip(ent.items(), ("C0", "C1", "C3"), strict=True):
            ax.hist(e, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=c)
            ax.hist(e, bins=bins, density=True, histtype="step", color=c, label=LABELS[k])
        r = results[name]
        ax.set_title(
            f"{name}: test accuracy {r['test_accuracy']:.3f}\n"
            f"AUROC unseen {r['auroc_unseen_digits']:.2f}, noise {r['auroc_noise']:.2f}",
            fontsize=9,
        )
        ax.set_xlabel("predictive entropy (nats)")
        ax.axvline(np.log(NUM_CLASSES), color="k", lw=0.6, ls=":")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_precisions(mcmc, path: str) -> None:
    samples = mcmc.get_samples(group_by_chain=True)
    taus = {k: np.asarray(v) for k, v in samples.items() if k.startswith("tau")}
    fig, axes = plt.subplots(1, len(taus), figsize=(3.2 * len(taus), 2.8), squeeze=False)
    for ax, (k, v) in zip(axes[0], taus.items(), strict=True):
        for c, chain in enumerate(v):
            ax.plot(chain, lw=0.5, label=f"chain {c}")
        ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("draw")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="In- and out-of-distribution entropy on 8x8 digits: S3HMC BNN, SGD, MC dropout"
    )
    parser.add_argument("--num-warmup", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=[16])
    parser.add_argument("--map-steps", type=int, default=2000)
    parser.add_argument("--sgd-steps", type=int, default=2000)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--dropout-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="bnn_digits_output")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
