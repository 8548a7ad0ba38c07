"""Find the parameter and hyperparameter blocks of a NumPyro model by tracing it.

- **hyperparameters** (η = log τ): latent sites with a ``Gamma`` prior, or the
  sites named in ``hyper_sites=``;
- **parameters** (θ): every other continuous latent site.

A parameter element is *governed* when its prior is ``Normal(loc, scale)`` and
its scale depends on the hyperparameters only; its prior precision
``1/scale**2`` at the current η is then read from the model itself, so
``1/sqrt(tau)``, ``1/sqrt(kappa * tau)``, plates, ``expand``, ``to_event`` and
flax names (``net/Dense_0.kernel``) need no special case. Which element depends
on which hyperparameter (and so Q_l) is found with forward-mode derivatives at
a random point near the prior median, not by counting by hand.

The hyperparameter metric is the constant c_l = Q_l/2 + α_l − 1 (docs/design.md §3).
Q_l counts the governed parameter elements that τ_l scales and, by default, the
``Normal`` observations it scales too (the exact curvature of the likelihood in
log τ; the paper's choice, Q = 0 for an output precision, is
``count_observations=False``). Where c_l ≤ 0 the fallback is c_l = Q_l/2 + α_l,
the expected Fisher information of the Gamma prior in log τ, with a warning.
"""

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import seed, substitute, trace

from numpyro_s3hmc._types import Array

_WRAPPERS = (
    dist.Independent,
    dist.ExpandedDistribution,
    dist.MaskedDistribution,
)


@dataclasses.dataclass(frozen=True)
class HyperSite:
    shape: tuple
    alpha: np.ndarray  # Gamma concentration, broadcast to shape (1 if not Gamma)
    q: np.ndarray  # governed elements per hyperparameter element
    c: np.ndarray  # metric constant per element, after the fallback
    fallback: np.ndarray  # where Q/2 + α − 1 ≤ 0 and the fallback was used
    governs: tuple  # names of the sites it scales


@dataclasses.dataclass(frozen=True)
class ParamSite:
    shape: tuple
    prior: str
    governed: np.ndarray  # bool per element: metric from the prior precision
    governed_by: tuple  # hyperparameter sites its prior scale depends on


@dataclasses.dataclass(frozen=True)
class SitePartition:
    """The blocks of a model, as found by :func:`partition_sites`.

    ``print(partition)`` shows which site is in which block, with Q_l and c_l.
    """

    params: tuple
    hyper: tuple
    param_sites: dict
    hyper_sites: dict
    param_template: dict = dataclasses.field(repr=False)  # θ used to trace the prior

    @property
    def hyper_precision(self) -> np.ndarray:
        """c, the diagonal of G_η, flattened in the order of :func:`split_z`."""
        if not self.hyper:
            return np.zeros((0,))
        return np.concatenate([self.hyper_sites[k].c.ravel() for k in self.hyper])

    @property
    def governed_mask(self) -> np.ndarray:
        if not self.params:
            return np.zeros((0,), bool)
        return np.concatenate([self.param_sites[k].governed.ravel() for k in self.params])

    def __str__(self) -> str:
        lines = ["hyperparameters (η = log τ):"]
        for k in self.hyper:
            h = self.hyper_sites[k]
            lines.append(
                f"  {k:<28} shape={h.shape!s:<10} α={_short(h.alpha)} "
                f"Q={_short(h.q)} c={_short(h.c)}"
                + ("  [fallback c = Q/2 + α]" if h.fallback.any() else "")
                + (f"  scales: {', '.join(h.governs)}" if h.governs else "")
            )
        if not self.hyper:
            lines.append("  (none)")
        lines.append("parameters (θ):")
        for k in self.params:
            p = self.param_sites[k]
            metric = (
                "prior precision"
                if p.governed.all()
                else ("adapted constant" if not p.governed.any() else "mixed")
            )
            by = f" <- {', '.join(p.governed_by)}" if p.governed_by else ""
            lines.append(f"  {k:<28} shape={p.shape!s:<10} {p.prior:<10} {metric}{by}")
        return "\n".join(lines)


def _short(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        return f"{float(a.ravel()[0]):g}"
    if np.all(a == a.ravel()[0]):
        return f"{float(a.ravel()[0]):g} (x{a.size})"
    return f"[{float(a.min()):g}..{float(a.max()):g}]"


def _base(fn):
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


def _normal_precision(site) -> Array | None:
    """The prior precision of each element of a ``Normal`` site, else None."""
    fn = _base(site["fn"])
    if not isinstance(fn, dist.Normal):
        return None
    precision = 1.0 / fn.scale**2
    if site.get("scale") is not None:  # numpyro.handlers.scale multiplies log p
        precision = precision * site["scale"]
    return jnp.broadcast_to(precision, jnp.shape(site["value"]))


def substitute_unconstrained(model: Callable, z: dict) -> Callable:
    """``model`` with the latent sites in ``z`` set from unconstrained values."""

    def substitute_fn(site):
        if site["type"] == "sample" and not site["is_observed"] and site["name"] in z:
            return biject_to(site["fn"].support)(z[site["name"]])
        return None

    return substitute(model, substitute_fn=substitute_fn)


def site_precisions(model, model_args, model_kwargs, z, obs_names):
    """Prior precisions of the latent Normal sites and of the Normal observations."""
    # no argument checks: mid-trajectory an overflowing η is a divergence, not an error
    with numpyro.validation_enabled(False):
        tr = trace(substitute_unconstrained(seed(model, 0), z)).get_trace(
            *model_args, **model_kwargs
        )
    latent = {}
    for name, value in z.items():
        p = _normal_precision(tr[name])
        latent[name] = jnp.zeros(jnp.shape(value)) if p is None else p
    observed = {}
    for name in obs_names:
        p = _normal_precision(tr[name])
        observed[name] = jnp.zeros(jnp.shape(tr[name]["value"])) if p is None else p
    return latent, observed


def split_z(z: dict, partition: SitePartition) -> tuple[Array, Array]:
    """Flatten ``z`` into (θ, η), each in sorted site order, both in one dtype.

    ``ravel_pytree`` flattens an empty block to float32 even under x64; a
    float32 ``eta`` of size 0 beside a float64 ``theta`` would break a while
    loop's carry, so an empty block takes the other's dtype.
    """
    theta, _ = ravel_pytree({k: z[k] for k in partition.params})
    eta, _ = ravel_pytree({k: z[k] for k in partition.hyper})
    nonempty = [x for x in (theta, eta) if x.size]
    dtype = jnp.result_type(*nonempty) if nonempty else theta.dtype
    return theta.astype(dtype), eta.astype(dtype)


def _unflatten(flat: Array, sites: dict) -> dict:
    z, offset = {}, 0
    for k in sorted(sites):
        size = int(np.prod(sites[k].shape))
        z[k] = jnp.reshape(flat[offset : offset + size], sites[k].shape)
        offset += size
    return z


def merge_z(theta: Array, eta: Array, partition: SitePartition) -> dict:
    """Inverse of :func:`split_z`."""
    return {
        **_unflatten(theta, partition.param_sites),
        **_unflatten(eta, partition.hyper_sites),
    }


def prior_precision_fn(
    model: Callable, partition: SitePartition, model_args=(), model_kwargs=None
) -> Callable[[Array], Array]:
    """η -> the prior precision of each governed θ element (0 elsewhere).

    The parameters are held at ``partition.param_template``: governed elements
    do not depend on θ (checked by :func:`partition_sites`), so the result is a
    function of η alone, which keeps the Hamiltonian semi-separable. The model's
    likelihood is traced too, but nothing uses it, and XLA drops it.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    mask = partition.governed_mask
    template = partition.param_template

    def fn(eta):
        z = {**template, **_unflatten(eta, partition.hyper_sites)}
        latent, _ = site_precisions(model, model_args, model_kwargs, z, ())
        prec, _ = ravel_pytree({k: latent[k] for k in partition.params})
        return jnp.where(mask, prec.astype(eta.dtype), 0.0)

    return fn


def partition_sites(
    model: Callable,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    hyper_sites: tuple | None = None,
    count_observations: bool = True,
    seed: int = 0,
) -> SitePartition:
    """Trace ``model`` and split its latent sites into parameters and hyperparameters.

    Parameters
    ----------
    model : a NumPyro model.
    model_args, model_kwargs : the arguments the model is run with.
    hyper_sites : names of the hyperparameter sites, overriding the default
        (every latent ``Gamma`` site). Each must have positive support.
    count_observations : count the ``Normal`` observations an output precision
        scales in its Q_l (default), or not (the paper's Q = 0).
    seed : seed of the random point at which dependencies are traced.

    Raises
    ------
    ValueError
        For a discrete latent site, non-finite observed data, or a
        ``hyper_sites`` entry that is not a positive latent site.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([50]))
    >>> p = partition_sites(model)
    >>> p.hyper, p.params, float(p.hyper_sites["tau"].c[()])
    (('tau',), ('x',), 26.0)
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    with jax.ensure_compile_time_eval():
        return _partition(model, model_args, model_kwargs, hyper_sites, count_observations, seed)


def _latent_and_observed(tr):
    latent, observed = {}, []
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"] and isinstance(site["value"], jax.core.Tracer):
            # a value another kernel conditions on inside a jitted or parallel map
            # (NumPyro's Gibbs), not data: nothing to check
            observed.append(name)
        elif site["is_observed"]:
            value = np.asarray(site["value"])
            finite = np.isfinite(value)
            fn = site["fn"]
            if isinstance(fn, dist.MaskedDistribution):  # obs_mask=, handlers.mask
                # masked-out entries do not enter the density
                mask = np.asarray(fn._mask)
                mask = mask.reshape(mask.shape + (1,) * fn.event_dim)
                finite = finite | ~np.broadcast_to(mask, value.shape)
            bad = int(np.size(finite) - np.sum(finite))
            if not isinstance(_base(site["fn"]), dist.Unit) and bad:
                raise ValueError(
                    f"Observed site {name!r} has {bad} non-finite value(s) (NaN or inf)."
                    " Drop or impute them, or pass obs_mask= to numpyro.sample (True where"
                    " observed) so that the missing entries are sampled."
                )
            observed.append(name)
        else:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"Latent site {name!r} has a discrete distribution"
                    f" ({type(_base(site['fn'])).__name__}); S3HMC samples continuous"
                    " sites only. Marginalise it out in the model (e.g. a"
                    " MixtureSameFamily likelihood), observe it, or give the discrete"
                    " sites a block of their own in NumPyro's Gibbs kernel:"
                    " Gibbs([(DiscreteGibbs(model), discrete_latent_sites),"
                    " (S3HMC(model), None)]), from numpyro.infer import Gibbs,"
                    " DiscreteGibbs; from numpyro.infer.gibbs import discrete_latent_sites."
                )
            latent[name] = site
    return latent, observed


def _random_point(seed_value: int) -> Callable:
    """A substitute_fn drawing each latent site uniformly in (-1, 1), unconstrained.

    NumPy draws the point: JAX sampling may be staged into an enclosing trace
    (``chain_method="parallel"`` calls ``init`` under ``pmap``), and the partition
    needs concrete numbers.
    """
    rng = np.random.default_rng(seed_value)

    def substitute_fn(site):
        if site["type"] != "sample" or site["is_observed"]:
            return None
        if site["fn"].support.is_discrete:  # reported by _latent_and_observed
            return None
        transform = biject_to(site["fn"].support)
        shape = site["fn"].shape(site["kwargs"].get("sample_shape", ()))
        u = rng.uniform(-1.0, 1.0, size=transform.inverse_shape(shape))
        return transform(jnp.asarray(u, dtype=jnp.result_type(float)))

    return substitute_fn


def _partition(model, model_args, model_kwargs, hyper_sites, count_obs, seed_value):
    tr = trace(
        substitute(seed(model, seed_value), substitute_fn=_random_point(seed_value))
    ).get_trace(*model_args, **model_kwargs)
    latent, obs_names = _latent_and_observed(tr)

    if hyper_sites is None:
        hyper = tuple(k for k, s in latent.items() if isinstance(_base(s["fn"]), dist.Gamma))
    else:
        hyper = tuple(hyper_sites)
        for k in hyper:
            if k not in latent:
                raise ValueError(
                    f"hyper_sites names {k!r}, which is not a continuous latent site"
                    f" of the model; latent sites: {sorted(latent)}."
                )
            if latent[k]["fn"].support is not constraints.positive:
                raise ValueError(
                    f"hyper_sites names {k!r}, whose support is"
                    f" {latent[k]['fn'].support}; a hyperparameter must be a positive"
                    " site (a precision), sampled in log coordinates."
                )
    hyper = tuple(sorted(hyper))
    params = tuple(sorted(k for k in latent if k not in hyper))
    z0 = {k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latent.items()}

    theta0, unravel_theta = ravel_pytree({k: z0[k] for k in params})
    eta0, unravel_eta = ravel_pytree({k: z0[k] for k in hyper})

    def precisions(theta, eta):
        z = {**unravel_theta(theta), **unravel_eta(eta)}
        latent_p, obs_p = site_precisions(model, model_args, model_kwargs, z, obs_names)
        lat, _ = ravel_pytree({k: latent_p[k] for k in params})
        ob, _ = ravel_pytree({k: obs_p[k] for k in obs_names})
        return lat, ob

    lat0, ob0 = precisions(theta0, eta0)
    tangent = jnp.asarray(
        np.random.default_rng(seed_value + 1).normal(size=theta0.shape), theta0.dtype
    )
    _, (dlat_dtheta, dob_dtheta) = jax.jvp(lambda t: precisions(t, eta0), (theta0,), (tangent,))
    if eta0.size:
        dlat_deta, dob_deta = jax.jacfwd(lambda e: precisions(theta0, e))(eta0)
    else:
        dlat_deta = jnp.zeros((lat0.size, 0))
        dob_deta = jnp.zeros((ob0.size, 0))

    is_normal = {k: _normal_precision(latent[k]) is not None for k in params}
    normal_flat, _ = ravel_pytree({k: jnp.full(jnp.shape(z0[k]), is_normal[k]) for k in params})
    governed = (
        np.asarray(normal_flat, bool)
        & (np.asarray(dlat_dtheta) == 0)
        & np.isfinite(np.asarray(lat0))
        & (np.asarray(lat0) > 0)
    )
    obs_normal, _ = ravel_pytree(
        {
            k: jnp.full(jnp.shape(tr[k]["value"]), _normal_precision(tr[k]) is not None)
            for k in obs_names
        }
    )
    obs_governed = np.asarray(obs_normal, bool) & (np.asarray(dob_dtheta) == 0)

    dep = (np.asarray(dlat_deta) != 0) & governed[:, None]  # (n_params, n_hyper)
    obs_dep = (np.asarray(dob_deta) != 0) & obs_governed[:, None]
    q = dep.sum(0) + (obs_dep.sum(0) if count_obs else 0)

    param_infos, offset = {}, 0
    for k in params:
        shape = tuple(jnp.shape(z0[k]))
        size = int(np.prod(shape))
        rows = dep[offset : offset + size]
        param_infos[k] = ParamSite(
            shape=shape,
            prior=type(_base(latent[k]["fn"])).__name__,
            governed=governed[offset : offset + size].reshape(shape),
            governed_by=_site_names(rows.any(0), hyper, z0),
        )
        offset += size

    hyper_infos, offset, fallbacks = {}, 0, []
    for k in hyper:
        shape = tuple(jnp.shape(z0[k]))
        size = int(np.prod(shape))
        fn = _base(latent[k]["fn"])
        alpha = (
            np.broadcast_to(np.asarray(fn.concentration, float), shape)
            if isinstance(fn, dist.Gamma)
            else np.ones(shape)
        )
        q_k = q[offset : offset + size].reshape(shape)
        c = q_k / 2 + alpha - 1
        fallback = c <= 0
        if fallback.any():
            fallbacks.append(k)
        c = np.where(fallback, q_k / 2 + alpha, c)
        governs = _site_names(dep[:, offset : offset + size].any(1), params, z0)
        if count_obs:
            governs += _site_names(
                obs_dep[:, offset : offset + size].any(1),
                tuple(obs_names),
                {n: tr[n]["value"] for n in obs_names},
            )
        hyper_infos[k] = HyperSite(shape, alpha, q_k, c, fallback, governs)
        offset += size
    if fallbacks:
        warnings.warn(
            f"Q/2 + alpha - 1 <= 0 for hyperparameter site(s) {fallbacks}: the metric"
            " constant falls back to Q/2 + alpha (the Gamma prior's Fisher information"
            " in log tau). Sampling is still exact; see print(partition).",
            UserWarning,
            stacklevel=4,
        )
    return SitePartition(
        params=params,
        hyper=hyper,
        param_sites=param_infos,
        hyper_sites=hyper_infos,
        param_template={k: jnp.asarray(z0[k]) for k in params},
    )


def _site_names(flags, names, values) -> tuple:
    """Names of the sites that own at least one flagged flat element."""
    out, offset = [], 0
    for k in sorted(names):
        size = int(np.size(values[k]))
        if np.asarray(flags[offset : offset + size]).any():
            out.append(k)
        offset += size
    return tuple(out)
