"""Example: a convolutional Bayesian neural network on all ten 8×8 digits, in and out of distribution
===================================================================================================

The S3HMC paper's §2.2 (its Figure 1) with a convolutional network, on
scikit-learn's bundled ``load_digits`` (1,797 8×8 images, no download), all ten
classes, split at random into a training set (``--train-fraction``, 70%) and a
held-out test set. Pixels are scaled to [0, 1].

The network (flax linen, ``--channels 8 --hidden 32``: 4,538 parameters): a 3×3
convolution with stride 2 and 8 channels (8×8 → 4×4×8), tanh, a dense tanh
layer of 32 units and a dense layer of 10 logits. The convolution is
:class:`numpyro_s3hmc.bnn.PatchConv`, which builds the 3×3 patches by padding
and slicing and multiplies them by the kernel: XLA's CPU convolutions are slow
inside the sampler's loops. Measured on the 2-core CPU, one gradient of the full-batch
potential (1,258 images) in a jitted ``lax.fori_loop``: ``nn.Conv(8, (3, 3))``
with 2×2 average pooling 40 ms, the same network with ``PatchConv`` 3.7 ms,
this stride-2 network 1.2 ms.

Three classifiers with the same architecture:

1. **S3HMC BNN**: :func:`numpyro_s3hmc.bnn.hierarchical_bnn` with a
   ``Gamma(2, 1)`` precision for the kernel and another for the bias of each
   layer (six precisions) and a categorical likelihood, sampled by S3HMC on the
   full training set (no minibatches) from a MAP start;
2. **Adam**: the network trained by Adam (optax, decoupled weight decay) on the
   full-batch cross-entropy;
3. **MC dropout** (Gal & Ghahramani 2016): the same with dropout after the
   convolution and after the hidden layer, kept on at test time and averaged over
   ``--dropout-samples`` masks.

For each: the test accuracy, negative log-likelihood per image (NLL) and
expected calibration error (ECE, 15 equal-width confidence bins), and the
predictive entropy H[E p(y | x)] (nats; at most log 10 ≈ 2.30) of the test
images and of three out-of-distribution (OOD) sets:

- ``noise``: images of uniform pixel noise on [0, 1];
- ``shuffled``: the test digits with their 64 pixels shuffled (a fresh
  permutation per image: the same intensities, no strokes);
- ``rotated``: the test digits rotated by 90° and inverted (1 − pixel): bright
  backgrounds with dark strokes, at the wrong angle.

``auroc_<set>`` is the probability that an image of the OOD set has a higher
predictive entropy than a test image (0.5 = no separation, 1 = perfect).

Writes to ``--output-dir``: ``cnn_entropy.png`` (histograms of the predictive
entropy in and out of distribution for each classifier, the paper's Figure 1),
``cnn_precisions.png`` (S3HMC traces of the layer precisions) and
``bnn_cnn.json``.
"""

import argparse
import json
import os
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

import numpyro  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402

from numpyro_s3hmc import S3HMC  # noqa: E402
from numpyro_s3hmc._arviz import arviz  # noqa: E402
from numpyro_s3hmc.bnn import (  # noqa: E402
    PatchConv,
    classification_summary,
    hierarchical_bnn,
    map_init,
    param_names,
    predict,
)

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
OOD_SETS = ("noise", "shuffled", "rotated")


class CNN(nn.Module):
    """conv 3×3 stride 2 → tanh → dense tanh → dense logits; optional dropout."""

    channels: int = 8
    hidden: int = 32
    out: int = NUM_CLASSES
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = x.reshape(x.shape[0], *IMAGE_SHAPE)
        x = nn.tanh(PatchConv(self.channels, (3, 3), strides=2, padding=1)(x))
        x = x.reshape(x.shape[0], -1)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        x = nn.tanh(nn.Dense(self.hidden)(x))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        return nn.Dense(self.out)(x)


def load_data(train_fraction: float = 0.7, num_noise: int = 300, seed: int = 0) -> dict:
    """All ten digits split into train/test, and three OOD sets made from the test images.

    Returns ``x_train``, ``y_train``, ``x_test``, ``y_test`` and the OOD images
    ``x_noise`` (uniform noise), ``x_shuffled`` (each test image's pixels in a
    random order) and ``x_rotated`` (test images rotated 90° and inverted);
    images are ``(N, 8, 8, 1)`` with pixels in [0, 1].
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, *IMAGE_SHAPE)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_train = int(round(train_fraction * len(y)))
    train, test = order[:n_train], order[n_train:]
    x_test = x[test]
    flat = x_test.reshape(len(test), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(x_test.shape)
    rotated = 1.0 - np.rot90(x_test, k=1, axes=(1, 2))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return {
        "x_train": f32(x[train]),
        "y_train": jnp.asarray(y[train], jnp.int32),
        "x_test": f32(x_test),
        "y_test": jnp.asarray(y[test], jnp.int32),
        "x_noise": f32(rng.uniform(0.0, 1.0, (num_noise, *IMAGE_SHAPE))),
        "x_shuffled": f32(shuffled),
        "x_rotated": f32(rotated),
    }


def train_sgd(
    module: CNN, x, y, *, steps: int, learning_rate: float, weight_decay: float, seed: int
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


def sgd_probs(module: CNN, params, x, *, num_masks: int = 1, seed: int = 0) -> np.ndarray:
    """``(masks, N, K)`` class probabilities; dropout on when ``num_masks > 1``."""
    if num_masks == 1:
        return np.asarray(jax.nn.softmax(module.apply({"params": params}, x), -1))[None]

    def one(key):
        logits = module.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})
        return jax.nn.softmax(logits, -1)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_masks)
    return np.asarray(jax.lax.map(one, keys))


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


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, num_bins: int = 15) -> float:
    """ECE: the bin-weighted mean |accuracy − confidence| over equal-width confidence bins.

    ``probs`` is ``(N, K)`` (predictive class probabilities), the confidence of
    an image its largest probability; bins are ``(k/B, (k+1)/B]``.
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == y
    # bin k holds confidences in (k/B, (k+1)/B]; a confidence of exactly 0 cannot occur
    which = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    ece = 0.0
    for k in range(num_bins):
        inside = which == k
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def evaluate(probs: dict, y_test, num_bins: int = 15) -> tuple[dict, dict]:
    """Accuracy, NLL, ECE, entropies and AUROCs from ``(draws, N, K)`` probabilities per set."""
    s = {k: classification_summary(p) for k, p in probs.items()}
    y = np.asarray(y_test)
    p_test = s["test"]["probs"]
    p_true = p_test[np.arange(len(y)), y]
    out = {
        "test_accuracy": float(np.mean(p_test.argmax(-1) == y)),
        "test_nll": float(-np.mean(np.log(np.maximum(p_true, 1e-12)))),
        "test_ece": expected_calibration_error(p_test, y, num_bins),
    }
    for k in probs:
        out[f"mean_entropy_{k}"] = float(s[k]["entropy"].mean())
        out[f"mean_mutual_information_{k}"] = float(s[k]["mutual_information"].mean())
    for k in probs:
        if k != "test":
            out[f"auroc_{k}"] = auroc(s["test"]["entropy"], s[k]["entropy"])
    return out, {k: v["entropy"] for k, v in s.items()}


def run_s3hmc(data: dict, args):
    """MAP start, then S3HMC on the hierarchical BNN; returns (model, mcmc, seconds)."""
    x, y = data["x_train"], data["y_train"]
    model = hierarchical_bnn(
        CNN(channels=args.channels, hidden=args.hidden),
        (1, *IMAGE_SHAPE),
        likelihood="classification",
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
        # the defaults (the pilot chooses each layer's coordinates, warmup the
        # trajectory scheme: docs/design.md §3.2 and §6.2) with a cap on the steps
        S3HMC(model, max_num_steps=args.max_num_steps),
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

    As in ``examples/bnn_digits.py``: ArviZ, not ``numpyro.diagnostics``, whose
    ESS estimate of a prior-only weight's antithetic chain can come out negative.
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
    t_start = time.time()
    data = load_data(train_fraction=args.train_fraction, seed=args.seed)
    sets = {"test": data["x_test"], **{k: data[f"x_{k}"] for k in OOD_SETS}}
    every_x = jnp.concatenate(list(sets.values()))
    ends = np.cumsum([len(v) for v in sets.values()])[:-1]
    results, entropies = {}, {}

    # 1. S3HMC BNN
    model, mcmc, seconds = run_s3hmc(data, args)
    samples = mcmc.get_samples()
    every = np.asarray(predict(model, samples, every_x)["probs"])
    probs = dict(zip(sets, np.split(every, ends, axis=1), strict=True))
    results["S3HMC BNN"], entropies["S3HMC BNN"] = evaluate(probs, data["y_test"])
    results["S3HMC BNN"]["sampler"] = s3hmc_diagnostics(mcmc, args.num_chains)
    results["S3HMC BNN"]["seconds_map_and_sampling"] = seconds

    # 2. Adam and 3. MC dropout
    for name, rate, masks in (
        ("Adam", 0.0, 1),
        ("MC dropout", args.dropout, args.dropout_samples),
    ):
        module = CNN(channels=args.channels, hidden=args.hidden, dropout=rate)
        t0 = time.time()
        params = train_sgd(
            module,
            data["x_train"],
            data["y_train"],
            steps=args.sgd_steps,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            seed=args.seed,
        )
        every = sgd_probs(module, params, every_x, num_masks=masks, seed=args.seed + 1)
        probs = dict(zip(sets, np.split(every, ends, axis=1), strict=True))
        results[name], entropies[name] = evaluate(probs, data["y_test"])
        results[name]["seconds"] = time.time() - t0

    results["data"] = {k: int(v.shape[0]) for k, v in data.items() if k.startswith("x_")}
    shapes = param_names(CNN(channels=args.channels, hidden=args.hidden), (1, *IMAGE_SHAPE))
    results["num_parameters"] = int(sum(np.prod(s) for s in shapes.values()))
    results["settings"] = vars(args)
    results["seconds_total"] = time.time() - t_start
    print(json.dumps(results, indent=1))
    with open(os.path.join(args.output_dir, "bnn_cnn.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_entropies(entropies, results, os.path.join(args.output_dir, "cnn_entropy.png"))
    plot_precisions(mcmc, os.path.join(args.output_dir, "cnn_precisions.png"))
    return results


LABELS = {
    "test": "test digits (in distribution)",
    "noise": "uniform noise images",
    "shuffled": "pixel-shuffled test digits",
    "rotated": "test digits rotated 90° and inverted",
}


def plot_entropies(entropies: dict, results: dict, path: str) -> None:
    """Histograms of predictive entropy per classifier, in and out of distribution."""
    fig, axes = plt.subplots(1, len(entropies), figsize=(4.4 * len(entropies), 3.6), sharey=True)
    bins = np.linspace(0.0, np.log(NUM_CLASSES), 31)
    for ax, (name, ent) in zip(axes, entropies.items(), strict=True):
        for (k, e), c in zip(ent.items(), ("C0", "C1", "C2", "C3"), strict=True):
            ax.hist(e, bins=bins, density=True, histtype="stepfilled", alpha=0.3, color=c)
            ax.hist(e, bins=bins, density=True, histtype="step", color=c, label=LABELS[k])
        r = results[name]
        ax.set_title(
            f"{name}: test accuracy {r['test_accuracy']:.3f}, ECE {r['test_ece']:.3f}\n"
            "AUROC " + ", ".join(f"{k} {r[f'auroc_{k}']:.2f}" for k in OOD_SETS),
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
    fig, axes = plt.subplots(1, len(taus), figsize=(3.0 * len(taus), 2.8), squeeze=False)
    for ax, (k, v) in zip(axes[0], taus.items(), strict=True):
        for c, chain in enumerate(v):
            ax.plot(chain, lw=0.5, label=f"chain {c}")
        ax.set_yscale("log")
        ax.set_title(k, fontsize=8)
        ax.set_xlabel("draw")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="A CNN BNN on all ten 8x8 digits: S3HMC, Adam and MC dropout, "
        "accuracy, NLL, ECE and out-of-distribution entropy"
    )
    parser.add_argument("--num-warmup", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument(
        "--max-num-steps",
        type=int,
        default=192,
        help="cap on the integrator steps of a trajectory (S3HMC's max_num_steps); on this "
        "network every draw reaches it: the adapted trajectory length asks for hundreds",
    )
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--map-steps", type=int, default=2000)
    parser.add_argument("--sgd-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--dropout-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--platform", default="cpu", help="cpu, gpu or tpu")
    parser.add_argument("--output-dir", default="bnn_cnn_output")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    numpyro.set_platform(args.platform)
    main(args)
