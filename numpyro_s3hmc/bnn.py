"""Hierarchical Bayesian neural networks from flax modules (linen or nnx).

:func:`hierarchical_bnn` turns a ``flax.linen`` or ``flax.nnx`` module into a
NumPyro model with a ``Gamma(alpha, beta)`` precision for the kernel and another
for the bias of every layer (or one per layer), the structure
:class:`~numpyro_s3hmc.S3HMC` detects on its own. Linen modules go through
``random_flax_module``, nnx modules through ``random_nnx_module``; both name
the parameter sites ``<name>/<path>.<leaf>``, e.g. ``net/Dense_0.kernel`` or
``net/layers.0.kernel``.
:func:`map_init` finds a MAP start (the TFP guide's pre-training step) to pass
as ``MCMC.run(init_params=...)``; :func:`regression_summary` and
:func:`classification_summary` split the predictive uncertainty.
:class:`PatchConv` is ``flax.linen.Conv`` written as slices and one matrix
product, for CNNs sampled on a CPU, where XLA's convolutions are slow inside the
sampler's loops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_flax_module, random_nnx_module
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.util import unconstrain_fn

LIKELIHOODS = ("regression", "heteroscedastic", "classification")


def is_nnx(module) -> bool:
    """Whether ``module`` is a ``flax.nnx.Module`` (else it is taken for linen)."""
    from flax import nnx

    return isinstance(module, nnx.Module)


def param_names(module, input_shape: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Flattened parameter names of a flax module, as NumPyro's ``random_*_module`` names them.

    Parameters
    ----------
    module : a ``flax.linen.Module``, or a constructed ``flax.nnx.Module``.
    input_shape : the shape of a dummy input, e.g. ``(1, num_features)``;
        required for linen (its parameters exist only after ``init``), unused
        for nnx.

    Returns
    -------
    dict from ``"Dense_0.kernel"``-style (linen) or ``"layers.0.kernel"``-style
    (nnx) names to parameter shapes, in tree order. Only ``nnx.Param``
    variables count for nnx: batch statistics and RNG state are not parameters.
    """
    if is_nnx(module):
        from flax import nnx

        tree = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    else:
        if input_shape is None:
            raise ValueError("input_shape is required for a flax.linen module.")
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.ones(input_shape))
        tree = shapes.get("params", {})
    out: dict[str, tuple[int, ...]] = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(v, name)
            else:
                out[name] = tuple(jnp.shape(v))

    walk(tree, "")
    return out


def check_prior_keys(
    module,
    prior: Mapping,
    input_shape: Sequence[int] | None = None,
    *,
    require_all: bool = False,
) -> None:
    """Raise if a prior dict for ``random_flax_module``/``random_nnx_module`` names unknown parameters.

    NumPyro silently ignores prior keys that match no parameter, and keeps
    parameters without a key as point estimates (``numpyro.param``), which
    MCMC then never moves.

    Parameters
    ----------
    module : the ``flax.linen.Module`` passed to ``random_flax_module``, or the
        ``flax.nnx.Module`` passed to ``random_nnx_module``.
    prior : the prior dict, keyed by flattened names such as ``"Dense_0.kernel"``
        (linen) or ``"layers.0.kernel"`` (nnx).
    input_shape : the shape of a dummy input (linen only).
    require_all : also raise when some parameter has no prior.

    Raises
    ------
    ValueError
        Naming the bad (or, with ``require_all``, missing) keys and listing the
        valid ones.
    """
    valid = param_names(module, input_shape)
    bad = [k for k in prior if k not in valid]
    missing = [k for k in valid if k not in prior] if require_all else []
    if bad or missing:
        msg = []
        if bad:
            msg.append(f"prior keys {bad} match no parameter of {type(module).__name__}")
        if missing:
            msg.append(f"parameters {missing} have no prior")
        raise ValueError("; ".join(msg) + f". Valid keys: {list(valid)}.")


class PatchConv(nn.Module):
    """A 2-D convolution (NHWC), as ``flax.linen.Conv``, computed as slices and one matrix product.

    XLA's CPU backend runs the convolutions of a gradient several times slower
    inside a loop than outside one (jax-ml/jax#12868; in the loop's compiled
    program the backward convolutions keep dimension orders that XLA rewrites
    outside loops), and a sampler evaluates every gradient inside its loops.
    Measured on 2 CPU cores, one gradient of a classification potential on 256
    images in a jitted ``lax.fori_loop``: the 8×8 CNN of
    ``benchmarks/bnn_scale.py`` 254 ms with ``nn.Conv`` (7 ms outside the loop)
    and 5.6 ms with this module; the paper's LeNet 734 ms with ``nn.Conv`` and 83
    ms with this module. It copies each input window into memory (N × output
    pixels × window × input channels floats), which ``nn.Conv`` does not. It was
    not measured on a GPU.

    The ``kernel_size[0] * kernel_size[1]`` shifted (and strided) copies of the
    padded input are concatenated along the channels (im2col) and multiplied by
    the kernel. The parameters are those of ``nn.Conv(features, kernel_size,
    strides, padding)``, ``kernel`` of shape ``(*kernel_size, C_in, features)``
    and ``bias``, initialised the same way, so :func:`hierarchical_bnn` gives each
    a precision and ``nn.Conv``'s parameters can be used as they are. Dilation,
    feature groups and circular padding are not supported.

    Attributes
    ----------
    features : output channels.
    kernel_size : ``(height, width)`` of the window.
    strides : an int or ``(height, width)``.
    padding : ``"SAME"``, ``"VALID"``, an int (the same on every side) or
        ``((top, bottom), (left, right))``, as for ``nn.Conv``.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str | int | tuple[tuple[int, int], tuple[int, int]] = "SAME"

    @nn.compact
    def __call__(self, x):
        if np.shape(self.kernel_size) != (2,) or jnp.ndim(x) != 4:
            raise ValueError(
                "PatchConv is a 2-D convolution of NHWC images: kernel_size must be "
                f"(height, width) and the input 4-D, got kernel_size={self.kernel_size!r} "
                f"and an input of shape {jnp.shape(x)}."
            )
        kh, kw = self.kernel_size
        sh, sw = (self.strides,) * 2 if isinstance(self.strides, int) else self.strides
        if isinstance(self.padding, str):
            if self.padding not in ("SAME", "VALID"):
                raise ValueError(
                    f"PatchConv: padding must be 'SAME', 'VALID', an int or pairs, got {self.padding!r}."
                )
            pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), self.padding)
        elif isinstance(self.padding, int):
            pads = ((self.padding, self.padding),) * 2
        else:
            pads = tuple(tuple(p) for p in self.padding)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        # lax.conv_general_dilated_patches would also do, but orders each patch's
        # features channel first; these slices give nn.Conv's (kh, kw, C_in) order,
        # so its kernel reshapes without a transpose
        out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        patches = jnp.concatenate(
            [
                x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
                for i in range(kh)
                for j in range(kw)
            ],
            axis=-1,
        )
        shape = (kh, kw, x.shape[-1], self.features)
        # initialised as nn.Conv's (its param_dtype is float32 under x64 too)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return patches @ kernel.reshape(-1, self.features) + bias


PRECISIONS = ("tensor", "layer")


def _precision_site(name: str, precisions: str = "tensor") -> str:
    layer, _, leaf = name.rpartition(".")
    layer = layer.replace(".", "_")
    if precisions == "layer":
        return f"tau_{layer}" if layer else "tau"
    return f"tau_{layer}_{leaf}" if layer else f"tau_{leaf}"


def hierarchical_bnn(
    module,
    input_shape: Sequence[int] | None = None,
    *,
    likelihood: str = "regression",
    precisions: str = "tensor",
    alpha: float = 2.0,
    beta: float = 1.0,
    output_alpha: float = 2.0,
    output_beta: float = 0.1,
    output_precision: float | None = None,
    name: str = "net",
) -> Callable:
    """Build a NumPyro BNN with a Gamma precision per layer and parameter kind.

    Every parameter ``<layer>.<kind>`` of the module (``kind`` is ``kernel`` or
    ``bias`` for ``Dense``/``nnx.Linear``) gets the prior ``Normal(0, 1/sqrt(tau))``
    with its own ``tau_<layer>_<kind> ~ Gamma(alpha, beta)`` (``precisions="tensor"``)
    or one ``tau_<layer>`` shared by the layer's kernel and bias
    (``precisions="layer"``); dots in the layer path become underscores.

    Parameters
    ----------
    module : a ``flax.linen.Module``, or a constructed ``flax.nnx.Module``,
        mapping ``x`` of shape ``(N, D)`` to ``(N, K)``.
    input_shape : the shape of a dummy input, e.g. ``(1, D)``; linen only.
    likelihood : ``"regression"``: ``y ~ Normal(f(x)[:, 0], 1/sqrt(tau_y))``;
        ``"heteroscedastic"``: ``f(x)`` has two columns, mean and log-variance
        (the TFP guide's head); ``"classification"``: ``y ~ Categorical(logits=f(x))``.
    alpha, beta : the Gamma prior of the layer precisions.
    output_alpha, output_beta : the Gamma prior of ``tau_y`` (regression only);
        the default ``Gamma(2, 0.1)`` (mean 20) suits standardised targets.
    precisions : ``"tensor"`` (a precision per kernel and per bias) or ``"layer"``.
    output_precision : ``None`` samples ``tau_y``; a float fixes it.
    name : the module's site name; parameter sites are ``<name>/<layer>.<kind>``.

    Returns
    -------
    model(x, y=None, *, record_outputs=False)
        A NumPyro model. With ``record_outputs`` it records deterministic sites
        ``"mean"`` and ``"var"`` (regression) or ``"probs"`` (classification).
        Its attributes: ``param_sites`` (parameter site -> its precision site),
        ``precision_sites`` (in sampling order) and ``likelihood``. An nnx
        module is not modified: ``random_nnx_module`` works on a copy of its
        parameters.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
    if precisions not in PRECISIONS:
        raise ValueError(f"precisions must be one of {PRECISIONS}, got {precisions!r}.")
    nnx_module = is_nnx(module)
    names = list(param_names(module, input_shape))
    sites = {k: _precision_site(k, precisions) for k in names}

    def model(x, y=None, *, record_outputs: bool = False):
        taus = {}
        for s in dict.fromkeys(sites.values()):
            taus[s] = numpyro.sample(s, dist.Gamma(alpha, beta))
        prior = {k: dist.Normal(0.0, 1.0 / jnp.sqrt(taus[s])) for k, s in sites.items()}
        if nnx_module:
            net = random_nnx_module(name, module, prior)
        else:
            net = random_flax_module(name, module, prior, input_shape=tuple(input_shape))
        out = net(x)
        if likelihood == "classification":
            if record_outputs:
                numpyro.deterministic("probs", jax.nn.softmax(out, -1))
            numpyro.sample("y", dist.Categorical(logits=out), obs=y)
            return
        mean = out[..., 0]
        if likelihood == "heteroscedastic":
            var = jnp.exp(out[..., 1])
        else:
            if output_precision is None:
                tau_y = numpyro.sample("tau_y", dist.Gamma(output_alpha, output_beta))
            else:
                tau_y = jnp.asarray(output_precision)
            var = jnp.broadcast_to(1.0 / tau_y, mean.shape)
        if record_outputs:
            numpyro.deterministic("mean", mean)
            numpyro.deterministic("var", var)
        numpyro.sample("y", dist.Normal(mean, jnp.sqrt(var)), obs=y)

    model.param_sites = {f"{name}/{k}": s for k, s in sites.items()}
    model.precision_sites = tuple(dict.fromkeys(sites.values()))
    model.likelihood = likelihood
    return model


def map_init(
    model: Callable,
    *args,
    num_steps: int = 2000,
    learning_rate: float = 1e-2,
    rng_key: jax.Array | None = None,
    num_chains: int | None = None,
    jitter: float = 0.0,
    **kwargs,
) -> dict[str, jax.Array]:
    """A MAP point of ``model`` (SVI with ``AutoDelta`` and Adam), unconstrained.

    ``MCMC.run(init_params=...)`` takes, for a kernel built from a NumPyro model,
    latent values in unconstrained space (NumPyro's ``MCMC.warmup`` docstring);
    this returns exactly that, e.g. ``log tau`` for a Gamma site.

    Parameters
    ----------
    model : a NumPyro model; ``*args, **kwargs`` are its data.
    num_steps, learning_rate : Adam (optax) steps and learning rate.
    rng_key : default ``PRNGKey(0)``.
    num_chains : if greater than 1, stack the point ``num_chains`` times along
        a new leading axis, as ``MCMC`` with several chains expects.
    jitter : standard deviation of Gaussian noise added to each stacked copy.

    Returns
    -------
    dict from latent site names to unconstrained values.
    """
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    key_svi, key_jit = jax.random.split(rng_key)
    guide = AutoDelta(model)
    svi = SVI(model, guide, optax.adam(learning_rate), Trace_ELBO())
    result = svi.run(key_svi, num_steps, *args, progress_bar=False, **kwargs)
    point = guide.median(result.params)
    z = unconstrain_fn(model, args, kwargs, point)
    if num_chains is None or num_chains == 1:  # MCMC with one chain takes no chain axis
        return z
    leaves, tree = jax.tree_util.tree_flatten(z)
    keys = jax.random.split(key_jit, len(leaves))
    stacked = [
        jnp.stack([v] * num_chains) + jitter * jax.random.normal(k, (num_chains, *jnp.shape(v)))
        for v, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, stacked)


def predict(model: Callable, samples: Mapping, x, *, rng_key: jax.Array | None = None) -> dict:
    """Per-draw network outputs of a :func:`hierarchical_bnn` model at ``x``.

    Returns
    -------
    dict with ``"mean"`` and ``"var"`` (regression) or ``"probs"``
    (classification), each with a leading draws axis, and the predictive ``"y"``.
    """
    rng_key = jax.random.PRNGKey(1) if rng_key is None else rng_key
    sites = ["probs", "y"] if model.likelihood == "classification" else ["mean", "var", "y"]
    pred = Predictive(model, posterior_samples=dict(samples), return_sites=sites)
    return pred(rng_key, x, record_outputs=True)


def regression_summary(samples_mean, samples_var) -> dict[str, np.ndarray]:
    """Split the predictive variance of a Gaussian-output BNN.

    Parameters
    ----------
    samples_mean : ``(draws, N)`` per-draw predictive means.
    samples_var : per-draw noise variances, ``(draws, N)`` or broadcastable to it.

    Returns
    -------
    dict with ``mean`` (N,), ``aleatoric`` (mean of the variances), ``epistemic``
    (variance of the means, ``ddof=0``) and ``total`` = aleatoric + epistemic,
    the variance of the predictive mixture.
    """
    m = np.asarray(samples_mean, dtype=float)
    v = np.broadcast_to(np.asarray(samples_var, dtype=float), m.shape)
    aleatoric = v.mean(0)
    epistemic = m.var(0)
    return {
        "mean": m.mean(0),
        "aleatoric": aleatoric,
        "epistemic": epistemic,
        "total": aleatoric + epistemic,
    }


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def classification_summary(probs) -> dict[str, np.ndarray]:
    """Split the predictive entropy of a classifier BNN (nats).

    Parameters
    ----------
    probs : ``(draws, N, K)`` per-draw class probabilities.

    Returns
    -------
    dict with ``probs`` (N, K) mean probabilities, ``entropy`` (predictive
    entropy H[E p]), ``expected_entropy`` (E H[p], aleatoric) and
    ``mutual_information`` = entropy − expected_entropy (epistemic).
    """
    p = np.asarray(probs, dtype=float)
    mean = p.mean(0)
    entropy = _entropy(mean)
    expected = _entropy(p).mean(0)
    return {
        "probs": mean,
        "entropy": entropy,
        "expected_entropy": expected,
        "mutual_information": entropy - expected,
    }
