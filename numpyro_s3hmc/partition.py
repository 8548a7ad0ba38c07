"""Find the parameter and hyperparameter blocks of a NumPyro model by tracing it.

- **hyperparameters** (η = log h): every continuous latent site with positive
  support (``Gamma``, ``HalfNormal``, ``HalfCauchy``, ``Exponential``,
  ``LogNormal``, ``InverseGamma``, ...) that sets the scale of at least one
  ``Normal`` or ``StudentT`` child, latent or observed, whatever its own prior; or
  the sites named in ``hyper_sites=`` (docs/design.md §1);
- **parameters** (θ): every other continuous latent site.

A parameter element is *governed* when its prior is ``Normal(loc, scale)`` (or a
``StudentT`` with constant degrees of freedom) and its scale depends on the
hyperparameters only; its prior precision ``1/scale**2`` at the current η is then
read from the model itself, so ``1/sqrt(tau)``, ``1/sqrt(kappa * tau)``, ``sigma``,
plates, ``expand``, ``to_event`` and flax names (``net/Dense_0.kernel``) need no
special case. Which element depends on which hyperparameter, and how, is found with
forward-mode derivatives at a random point, not by matching expressions.

A parameter is a *location parent* of a governed element when it enters that
element's prior mean linearly (μ in θ_j ~ N(μ, τ), β in θ_j ~ N(x_jᵀβ, τ)), with a
coefficient that depends on nothing else (checked at two random points). The θ
metric then couples them (docs/design.md §3.1): ``partition.coupling`` holds the
coefficients.

The hyperparameter metric is the constant (docs/design.md §3)

    c_l = Σ_i w_i ½ (∂ log P_i / ∂η_l)² + k_l,

the Fisher information in η_l of the children it scales (½ per precision or
variance child, 2 per scale child; w_i = 1 for a ``Normal``, ν/(ν + 3) for a
``StudentT``), with k_l = α_l − 1 for a ``Gamma(α, β)`` precision (the paper's
c = Q/2 + α − 1) and k_l = 0 otherwise. Q_l counts the children; by default the
``Normal`` observations count too (``count_observations=False`` is the paper's
Q = 0 for an output precision). Where c_l ≤ 0 the fallback adds α_l (1 for a
non-Gamma site) instead of k_l, with a warning.
"""

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.reparam import Reparam

from numpyro_s3hmc._types import Array
from numpyro_s3hmc.metrics import LocationCoupling

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
    fallback: np.ndarray  # where Fisher + k ≤ 0 and the fallback was used
    governs: tuple  # names of the sites it scales
    prior: str = ""  # the hyperprior's family, e.g. "HalfCauchy"
    role: str = ""  # "precision", "variance", "scale", "mixed", "other" or "none"
    fisher: np.ndarray | None = None  # the children's Fisher information in η, per element
    k: np.ndarray | None = None  # the added constant: α − 1 for a Gamma precision, else 0


@dataclasses.dataclass(frozen=True)
class ParamSite:
    shape: tuple
    prior: str
    governed: np.ndarray  # bool per element: metric from the prior precision
    governed_by: tuple  # hyperparameter sites its prior scale depends on
    positive: bool = False  # a positive site left in θ (it scales no supported child)
    location_parents: tuple = ()  # θ sites that enter its prior mean linearly
    location_of: tuple = ()  # θ sites whose prior mean it enters linearly


class DataTerm(NamedTuple):
    """Normal observations whose means are linear in θ: their exact Fisher diagonal.

    The θ metric's data term is D_j(η) = Σ_o P_o(η) b_oj², P_o the precision of
    observation element o (flat over the sorted observed sites) and b_oj = ∂m_o/∂θ_j.
    """

    obs: np.ndarray  # flat observation index o of each entry
    cols: np.ndarray  # flat θ index j
    b2: np.ndarray  # b_oj²


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
    coupling: LocationCoupling | None = dataclasses.field(default=None, repr=False)
    data_term: DataTerm | None = dataclasses.field(default=None, repr=False)
    observed: tuple = ()  # the observed sites, sorted

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

    def site_mask(self, sites) -> np.ndarray:
        """Per θ element, whether it belongs to one of ``sites``."""
        if not self.params:
            return np.zeros((0,), bool)
        return np.concatenate(
            [np.full(self.param_sites[k].governed.size, k in sites) for k in self.params]
        )

    def __str__(self) -> str:
        lines = ["hyperparameters (η = log h; c = children's Fisher information in η + k):"]
        for k in self.hyper:
            h = self.hyper_sites[k]
            extra = f" α={_short(h.alpha)}" if h.prior == "Gamma" else ""
            lines.append(
                f"  {k:<28} shape={h.shape!s:<10} {h.prior or '?':<12} {h.role or '?':<9}"
                f"{extra} Q={_short(h.q)} c={_short(h.c)}"
                + ("  [fallback c = Fisher + α]" if h.fallback.any() else "")
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
            if p.location_parents:
                by += f"; mean <- {', '.join(p.location_parents)}"
            if p.location_of:
                by += f"; location parent of {', '.join(p.location_of)}"
            note = (
                "  (positive, but scales no Normal or StudentT child: a plain parameter)"
                if p.positive
                else ""
            )
            lines.append(f"  {k:<28} shape={p.shape!s:<10} {p.prior:<12} {metric}{by}{note}")
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


def _is_positive(fn) -> bool:
    """Whether a site's support is the positive reals (elementwise, any event shape)."""
    support = fn.support
    while isinstance(support, constraints._IndependentConstraint):
        support = support.base_constraint
    return support is constraints.positive


def _child(site) -> tuple[Array, Array] | None:
    """(precision, df) of each element of a ``Normal`` or ``StudentT`` site, else None.

    The precision is what the θ metric uses: ``1/scale**2`` for a ``Normal``, and the
    location Fisher information ``(ν + 1)/((ν + 3) scale**2)`` for a ``StudentT`` with
    ``ν`` degrees of freedom; df is ``inf`` for a ``Normal`` (docs/design.md §1, §3).
    """
    fn = _base(site["fn"])
    if isinstance(fn, dist.Normal):
        precision, df = 1.0 / fn.scale**2, jnp.inf
    elif isinstance(fn, dist.StudentT):
        df = fn.df
        precision = (df + 1.0) / ((df + 3.0) * fn.scale**2)
    else:
        return None
    if site.get("scale") is not None:  # numpyro.handlers.scale multiplies log p
        precision = precision * site["scale"]
    shape = jnp.shape(site["value"])
    return jnp.broadcast_to(precision, shape), jnp.broadcast_to(jnp.asarray(df, float), shape)


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
        child = _child(tr[name])
        latent[name] = jnp.zeros(jnp.shape(value)) if child is None else child[0]
    observed = {}
    for name in obs_names:
        child = _child(tr[name])
        observed[name] = jnp.zeros(jnp.shape(tr[name]["value"])) if child is None else child[0]
    return latent, observed


def _row_shape(tr, z, name):
    """The shape of a site's rows: a latent site's unconstrained value (one row per
    element of θ; a simplex or a correlation matrix has fewer of them than its value
    has), an observation's value."""
    return jnp.shape(z[name]) if name in z else jnp.shape(tr[name]["value"])


def _child_rows(model, model_args, model_kwargs, z, row_sites, obs_names):
    """Flat (precision, df) over the elements of ``row_sites`` then of ``obs_names``.

    Unsupported children (not ``Normal`` or ``StudentT``) get precision 0, df 0.
    """
    with numpyro.validation_enabled(False):
        tr = trace(substitute_unconstrained(seed(model, 0), z)).get_trace(
            *model_args, **model_kwargs
        )
    precision, df = {}, {}
    for name in tuple(row_sites) + tuple(obs_names):
        child = _child(tr[name])
        shape = _row_shape(tr, z, name)
        if child is None or jnp.shape(child[0]) != shape:
            child = jnp.zeros(shape), jnp.zeros(shape)
        precision[name], df[name] = child
    flat = [
        ravel_pytree([{k: d[k] for k in row_sites}, {k: d[k] for k in obs_names}])[0]
        for d in (precision, df)
    ]
    return flat[0], flat[1]


# --- the partition's derivatives, compiled ----------------------------------------
# Evaluated op by op, each operation of the model compiled on its own: seconds per
# kernel. Each program below is one compiled function of the point, its tangent and
# the model's array arguments; its compilation is reused by every call with the same
# model and shapes, new data included (jit_model_args=True recompiles nothing).


@dataclasses.dataclass(frozen=True)
class _Program:
    """A derivative of the factors' precisions (``what="rows"``) or means
    (``"locs"``) at a point, θ flat over ``others`` (name, shape, dtype) and the
    positive sites as a dict; ``site`` (a positive site's name, or the flat θ slice
    (offset, size)) makes it a Jacobian in that block instead of a directional one."""

    what: str
    model: Callable
    others: tuple
    obs_names: tuple
    site: object = None

    def __call__(self, args, kwargs, x, zpos, *tangent):
        _, unravel = ravel_pytree({k: jnp.zeros(shape, dtype) for k, shape, dtype in self.others})
        names = tuple(k for k, _, _ in self.others)
        values = _child_rows if self.what == "rows" else _locations

        def f(x, zpos):
            return values(self.model, args, kwargs, {**unravel(x), **zpos}, names, self.obs_names)

        if self.site is None:  # (value, directional derivative along the tangent)
            return jax.jvp(f, (x, zpos), tuple(tangent))
        if isinstance(self.site, str):  # Jacobian in the positive site, flattened
            shape = jnp.shape(zpos[self.site])
            return jax.jacfwd(lambda v: f(x, {**zpos, self.site: jnp.reshape(v, shape)}))(
                jnp.ravel(zpos[self.site])
            )
        offset, size = self.site  # Jacobian in a slice of θ
        return jax.jacfwd(lambda v: f(jnp.concatenate([x[:offset], v, x[offset + size :]]), zpos))(
            x[offset : offset + size]
        )


@partial(jax.jit, static_argnums=(0, 1))
def _compiled(program, static, data, *point):
    args, kwargs = _rebuild(static, data)
    return program(args, kwargs, *point)


def _rebuild(static, data):
    treedef, fixed = static
    leaves, data = [], iter(data)
    for i in range(treedef.num_leaves):
        leaves.append(fixed[i] if i in fixed else next(data))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _evaluate(program: _Program, model_args, model_kwargs, *point):
    """``program(model_args, model_kwargs, *point)``, compiled, the model's array
    arguments passed as arguments; evaluated directly where the model needs them
    concrete, an argument is neither an array nor hashable, or one is traced."""
    leaves, treedef = jax.tree_util.tree_flatten((tuple(model_args), dict(model_kwargs)))
    is_data = [isinstance(v, (np.ndarray, jax.Array)) for v in leaves]
    fixed = _Fixed({i: v for i, (v, d) in enumerate(zip(leaves, is_data)) if not d})
    data = tuple(v for v, d in zip(leaves, is_data) if d)
    try:
        hash((treedef, fixed))
    except TypeError:
        return program(model_args, model_kwargs, *point)
    if any(isinstance(v, jax.core.Tracer) for v in data):
        # traced arguments (NumPyro's Gibbs under pmap): a compiled call would make
        # every output traced; directly, what does not depend on them stays concrete
        return program(model_args, model_kwargs, *point)
    try:
        return _compiled(program, (treedef, fixed), data, *point)
    except jax.errors.JAXTypeError:  # e.g. the model takes int() of an argument
        return program(model_args, model_kwargs, *point)


class _Fixed(dict):
    """The non-array leaves of the model's arguments: hashable, compared by value."""

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


MAX_LOCATION_PARENTS = 1000  # beyond this the m × m Schur complement costs more than it buys


def _locations(model, model_args, model_kwargs, z, row_sites, obs_names):
    """Flat means of the elements of ``row_sites`` then of ``obs_names`` (0 where the
    site is not Normal or StudentT)."""
    with numpyro.validation_enabled(False):
        tr = trace(substitute_unconstrained(seed(model, 0), z)).get_trace(
            *model_args, **model_kwargs
        )
    locs = {}
    for name in tuple(row_sites) + tuple(obs_names):
        fn = _base(tr[name]["fn"])
        shape = _row_shape(tr, z, name)
        located = isinstance(fn, (dist.Normal, dist.StudentT))
        loc = fn.loc if located and jnp.shape(tr[name]["value"]) == shape else jnp.zeros(shape)
        locs[name] = jnp.broadcast_to(loc, shape).astype(jnp.result_type(float))
    return ravel_pytree([{k: locs[k] for k in row_sites}, {k: locs[k] for k in obs_names}])[0]


MAX_JACOBIAN = 20_000_000  # entries of a dense Jacobian of the means (all sites, or one)


def _linear_means(model, model_args, model_kwargs, z0, others, obs_names, zpos0, factor, rng):
    """The linear dependence of the factors' means on the parameters.

    ``factor`` flags the rows (the elements of ``others`` then of ``obs_names``) whose
    precision depends on η at most. A row is kept where its mean's derivative along
    a random direction is non-zero and the same at a second random point (θ and
    every positive site moved): a mean linear in θ with coefficients that depend on
    nothing. Returns ``(rows, cols, coefficients)``, ``cols`` indexing the flat
    ``others``, or None when no row qualifies.
    """
    x0, _ = ravel_pytree({k: z0[k] for k in others})
    if x0.size == 0 or not factor.any():
        return None
    spec = tuple((k, tuple(np.shape(z0[k])), str(jnp.result_type(z0[k]))) for k in others)
    program = _Program("locs", model, spec, tuple(obs_names))

    def dlocs(x, zpos, t):
        no_tpos = {k: jnp.zeros_like(v) for k, v in zpos.items()}
        return _evaluate(program, model_args, model_kwargs, x, zpos, t, no_tpos)[1]

    tangent = jnp.asarray(rng.normal(size=x0.shape), x0.dtype)
    dm0 = np.asarray(dlocs(x0, zpos0, tangent))
    if not (factor & (dm0 != 0)).any():
        return None
    x1 = jnp.asarray(rng.uniform(-1.0, 1.0, size=x0.shape), x0.dtype)
    zpos1 = {
        k: jnp.asarray(rng.uniform(-1.0, 1.0, size=np.shape(v)), v.dtype) for k, v in zpos0.items()
    }
    dm1 = dlocs(x1, zpos1, tangent)
    tol = 1e-4 if dm0.dtype == np.float32 else 1e-9
    linear = factor & (dm0 != 0) & (np.abs(dm0 - np.asarray(dm1)) <= tol * (1 + np.abs(dm0)))
    if not linear.any():
        return None
    # one Jacobian over every site where it fits: one program to compile, not one a
    # site (the demo's two partitions compiled 5 programs in 0.56 s, against 8 in
    # 0.92 s); else a site's columns at a time, for the sites a random direction in
    # the site shows the rows depend on
    whole = linear.size * x0.size <= MAX_JACOBIAN
    if whole:
        block = dataclasses.replace(program, site=(0, int(x0.size)))
        full = np.asarray(_evaluate(block, model_args, model_kwargs, x0, zpos0))
    rows, cols, vals, offset = [], [], [], 0
    for k in others:
        size = int(np.size(z0[k]))
        if whole:
            jac = full[:, offset : offset + size]
        else:
            t = np.zeros(x0.shape)
            t[offset : offset + size] = rng.normal(size=size)
            dm = dlocs(x0, zpos0, jnp.asarray(t, x0.dtype))
            jac = None
            if (np.asarray(dm)[linear] != 0).any() and linear.size * size <= MAX_JACOBIAN:
                block = dataclasses.replace(program, site=(offset, size))
                jac = np.asarray(_evaluate(block, model_args, model_kwargs, x0, zpos0))
        if jac is not None:
            jac = np.where(linear[:, None], jac, 0.0)
            r, c = np.nonzero(jac)
            rows.append(r)
            cols.append(c + offset)
            vals.append(jac[r, c])
        offset += size
    if not rows or not sum(r.size for r in rows):
        return None
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _to_theta(others, params, z0) -> np.ndarray:
    """Flat index over ``others`` -> flat θ index (``params`` holds every site of ``others``)."""
    theta_offset, offset = {}, 0
    for k in params:
        theta_offset[k] = offset
        offset += int(np.size(z0[k]))
    to_theta, offset = np.zeros(sum(int(np.size(z0[k])) for k in others), int), 0
    for k in others:
        size = int(np.size(z0[k]))
        to_theta[offset : offset + size] = theta_offset[k] + np.arange(size)
        offset += size
    return to_theta


def _data_in_theta(links, others, params, z0) -> DataTerm:
    obs, cols, vals = links
    return DataTerm(obs, _to_theta(others, params, z0)[cols], vals**2)


def _coupling_in_theta(links, others, params, z0):
    """The :class:`LocationCoupling` in flat θ indices, from rows/cols over ``others``."""
    rows, cols, vals = links
    to_theta = _to_theta(others, params, z0)
    rows, cols = to_theta[rows], to_theta[cols]
    parents = np.unique(cols)
    m = parents.size
    if m > MAX_LOCATION_PARENTS:
        warnings.warn(
            f"{m} location parents: more than {MAX_LOCATION_PARENTS}, so the θ metric"
            " ignores the coupling between them and their children (it stays diagonal)."
            " Sampling is still exact.",
            UserWarning,
            stacklevel=5,
        )
        return None
    col_of = {int(j): i for i, j in enumerate(parents)}
    parent_rows = np.isin(rows, parents)
    child_rows = np.unique(rows[~parent_rows])
    row_of = {int(j): i for i, j in enumerate(child_rows)}
    b_rows = np.zeros((child_rows.size, m))
    b_parents = np.zeros((m, m))
    for r, c, v in zip(rows, cols, vals, strict=True):
        if r in col_of:
            b_parents[col_of[int(r)], col_of[int(c)]] = v
        else:
            b_rows[row_of[int(r)], col_of[int(c)]] = v
    return LocationCoupling(parents, child_rows, b_rows, b_parents)


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


def noncentred_candidates(partition: SitePartition, model, model_args=(), model_kwargs=None):
    """The θ sites :func:`noncentred` can re-parameterise: ``Normal`` sites whose every
    element is governed and whose scale depends on a hyperparameter, and
    ``MultivariateNormal`` sites (a latent Gaussian process: whitened, θ = loc + L z)."""
    tr = _abstract_trace(model, model_args, model_kwargs)
    out = []
    for k, info in partition.param_sites.items():
        if f"{k}_decentered" in tr:  # the model already has a site of the name it would get
            continue
        fn = _reparam_base(tr[k]["fn"])
        normal = isinstance(fn, dist.Normal) and info.governed_by and info.governed.all()
        if normal or isinstance(fn, dist.MultivariateNormal):
            out.append(k)
    return tuple(out)


def _abstract_trace(model, model_args=(), model_kwargs=None) -> dict:
    """The trace of one prior draw of ``model``, traced abstractly: its sites' names
    and distributions' types, with no value computed (and nothing compiled)."""
    model_kwargs = {} if model_kwargs is None else model_kwargs
    out = {}

    def run():
        with numpyro.validation_enabled(False):
            out.update(trace(seed(model, 0)).get_trace(*model_args, **model_kwargs))

    jax.eval_shape(run)
    return out


def _reparam_base(fn):
    """What ``LocScaleReparam`` sees under its wrappers: it unwraps only these two (a
    masked site, e.g. the missing entries of ``obs_mask``, stays centred)."""
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


class _WhitenReparam(Reparam):
    """θ ~ MultivariateNormal(loc, L Lᵀ) as ``<site>_decentered`` = z ~ N(0, I) and the
    deterministic θ = loc + L z: ``LocScaleReparam(0)``'s non-centred coordinates for a
    multivariate normal, which NumPyro's reparameterisers do not cover."""

    def __call__(self, name, fn, obs):
        fn, expand_shape, event_dim = self._unwrap(fn)
        loc, tril = jnp.broadcast_to(fn.loc, fn.shape()), fn.scale_tril
        white = dist.Normal(jnp.zeros_like(loc), 1.0).to_event(1)
        z = numpyro.sample(f"{name}_decentered", self._wrap(white, expand_shape, event_dim))
        return None, loc + jnp.squeeze(tril @ z[..., None], -1)


def noncentred(model: Callable, sites) -> Callable:
    """``model`` with the ``sites`` in non-centred coordinates (docs/design.md §3.2):
    a ``Normal`` site by ``LocScaleReparam(0)``, a ``MultivariateNormal`` one whitened
    (θ = loc + L z). Each is sampled as ``<site>_decentered`` ~ N(0, 1) and recorded as
    the deterministic θ, so the draws keep the user's names. A hyperparameter that
    scaled only them becomes a plain parameter.
    """
    from numpyro.handlers import reparam
    from numpyro.infer.reparam import LocScaleReparam

    if not sites:
        return model

    def config(msg):
        if msg["name"] not in sites:
            return None
        whiten = isinstance(_reparam_base(msg["fn"]), dist.MultivariateNormal)
        return _WhitenReparam() if whiten else LocScaleReparam(0)

    return reparam(model, config=config)


def decentred_names(model: Callable, sites, model_args=(), model_kwargs=None) -> dict:
    """{site: the name of its ``_decentered`` sample site in ``noncentred(model, sites)``}.

    Usually ``<site>_decentered``; inside a ``scope`` handler (flax's
    ``random_flax_module``) NumPyro prefixes the new site once more, e.g.
    ``net/net/Dense_0.kernel_decentered`` for ``net/Dense_0.kernel``.
    """
    tr = _abstract_trace(noncentred(model, sites), model_args, model_kwargs)
    names = [k for k, v in tr.items() if v["type"] == "sample"]
    out = {}
    for k in sites:
        exact = f"{k}_decentered"
        out[k] = exact if exact in names else next(n for n in names if n.endswith(exact))
    return out


def standardise(model: Callable, model_args, model_kwargs, z: dict, sites) -> dict:
    """The non-centred coordinates of each site in ``sites`` at the unconstrained point
    ``z`` of ``model`` (the user's, centred): (θ − loc)/scale for a ``Normal`` site,
    L⁻¹(θ − loc) for a ``MultivariateNormal`` one."""
    with numpyro.validation_enabled(False):
        tr = trace(substitute_unconstrained(seed(model, 0), z)).get_trace(
            *model_args, **model_kwargs
        )
    out = {}
    for k in sites:
        fn, value = _base(tr[k]["fn"]), tr[k]["value"]
        if isinstance(fn, dist.MultivariateNormal):
            tril = jnp.broadcast_to(fn.scale_tril, value.shape + value.shape[-1:])
            delta = jnp.broadcast_to(value - fn.loc, value.shape)[..., None]
            out[k] = jax.scipy.linalg.solve_triangular(tril, delta, lower=True)[..., 0]
        else:
            out[k] = (value - fn.loc) / fn.scale
    return out


def data_precision_fn(
    model: Callable, partition: SitePartition, model_args=(), model_kwargs=None
) -> Callable[[Array], Array] | None:
    """η -> D(η), the exact Fisher diagonal of the Normal observations whose means are
    linear in θ (see :class:`DataTerm`), or None where there are none."""
    term = partition.data_term
    if term is None:
        return None
    model_kwargs = {} if model_kwargs is None else model_kwargs
    template = partition.param_template
    obs_names = partition.observed
    num_params = int(partition.governed_mask.size)

    def fn(eta):
        z = {**template, **_unflatten(eta, partition.hyper_sites)}
        _, observed = site_precisions(model, model_args, model_kwargs, z, obs_names)
        prec, _ = ravel_pytree({k: observed[k] for k in obs_names})
        contrib = prec.astype(eta.dtype)[term.obs] * jnp.asarray(term.b2, eta.dtype)
        return jax.ops.segment_sum(contrib, term.cols, num_segments=num_params)

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
    hyper_sites : the hyperparameter sites. Default: every positive latent site
        that scales a ``Normal`` or ``StudentT`` child (docs/design.md §1). A
        sequence of names replaces the default; a mapping edits it, ``True`` adding
        a site and ``False`` removing one, e.g. ``{"sigma": False}``. An added site
        must have positive support.
    count_observations : count the observations a hyperparameter scales in its
        Q_l and c_l (default), or not (the paper's Q = 0 for an output precision).
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
    >>> def scale_model():
    ...     sigma = numpyro.sample("sigma", dist.HalfCauchy(1.0))
    ...     numpyro.sample("x", dist.Normal(0.0, sigma).expand([50]))
    >>> h = partition_sites(scale_model).hyper_sites["sigma"]
    >>> h.role, h.prior, int(h.q), float(h.c)
    ('scale', 'HalfCauchy', 50, 100.0)
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    # inside a trace (the kernel's init under pmap) every operation would be staged:
    # evaluate it now instead. Only there: it also evaluates, and compiles, each
    # operation on a constant inside the jitted derivatives below separately
    inside = isinstance(jnp.zeros(()), jax.core.Tracer)
    with jax.ensure_compile_time_eval() if inside else contextlib.nullcontext():
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
                # NUTS's idiom: discrete_latent_sites skips an enumerated site, so the
                # Gibbs recipe below needs the annotation gone
                enumerated = (site.get("infer") or {}).get("enumerate") is not None
                raise ValueError(
                    f"Latent site {name!r} has a discrete distribution"
                    f" ({type(_base(site['fn'])).__name__}); S3HMC samples continuous"
                    " sites only"
                    + (
                        " and does not enumerate them: remove its infer={'enumerate':"
                        " ...} for the Gibbs recipe below."
                        if enumerated
                        else "."
                    )
                    + " Marginalise it out in the model (e.g. a"
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


_ROLES = {1.0: "precision", -1.0: "variance", -2.0: "scale"}


def _snap(power: np.ndarray) -> np.ndarray:
    """∂ log P/∂η rounded to the nearest half where it is within 1e-3 of it: a child
    precision that is a power of h gives an exact Fisher constant despite round-off."""
    nearest = np.round(2 * power) / 2
    return np.where(np.abs(power - nearest) < 1e-3, nearest, power)


def _role(powers: np.ndarray) -> str:
    """How a hyperparameter enters its children, from their ∂ log P/∂η."""
    if powers.size == 0:
        return "none"
    roles = {_ROLES.get(float(p), "other") for p in np.unique(powers)}
    return roles.pop() if len(roles) == 1 else "mixed"


def _select_hyper(hyper_sites, auto, latent, positive) -> tuple:
    """The hyperparameter sites: ``auto``, replaced (a sequence) or edited (a mapping)."""
    if hyper_sites is None:
        return auto
    if isinstance(hyper_sites, Mapping):
        named = hyper_sites
    elif isinstance(hyper_sites, str):
        raise TypeError(
            f"hyper_sites={hyper_sites!r} is a string; pass a sequence of site names,"
            f" e.g. ({hyper_sites!r},), or a mapping {{name: True/False}}."
        )
    else:
        named = dict.fromkeys(hyper_sites, True)
    for k, keep in named.items():
        if k not in latent:
            raise ValueError(
                f"hyper_sites names {k!r}, which is not a continuous latent site"
                f" of the model; latent sites: {sorted(latent)}."
            )
        if keep and k not in positive:
            raise ValueError(
                f"hyper_sites names {k!r}, whose support is"
                f" {latent[k]['fn'].support}; a hyperparameter must be a positive"
                " site (a precision, variance or scale), sampled in log coordinates."
            )
    if isinstance(hyper_sites, Mapping):
        chosen = (set(auto) | {k for k, v in named.items() if v}) - {
            k for k, v in named.items() if not v
        }
    else:
        chosen = set(named)
    return tuple(sorted(chosen))


def _partition(model, model_args, model_kwargs, hyper_sites, count_obs, seed_value):
    tr = trace(
        substitute(seed(model, seed_value), substitute_fn=_random_point(seed_value))
    ).get_trace(*model_args, **model_kwargs)
    latent, obs_names = _latent_and_observed(tr)
    obs_names = tuple(sorted(obs_names))
    z0 = {k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latent.items()}

    # candidates: the positive sites; rows: the elements of every other latent site
    # and of every observation, the possible Normal / StudentT children
    positive = tuple(sorted(k for k, s in latent.items() if _is_positive(s["fn"])))
    others = tuple(sorted(k for k in latent if k not in positive))
    x0, _ = ravel_pytree({k: z0[k] for k in others})
    spec = tuple((k, tuple(np.shape(z0[k])), str(jnp.result_type(z0[k]))) for k in others)
    program = _Program("rows", model, spec, obs_names)

    def rows_jvp(x, zpos, tx, tpos):
        return _evaluate(program, model_args, model_kwargs, x, zpos, tx, tpos)

    zpos0 = {k: jnp.asarray(z0[k]) for k in positive}
    no_tpos = {k: jnp.zeros_like(v) for k, v in zpos0.items()}
    (prec0, df0), _ = rows_jvp(x0, zpos0, jnp.zeros_like(x0), no_tpos)
    prec0, df0 = np.asarray(prec0), np.asarray(df0)
    n_lat = int(sum(np.size(z0[k]) for k in others))
    supported = np.concatenate(
        [np.full(np.size(z0[k]), _child(latent[k]) is not None, bool) for k in others]
        + [np.full(np.size(tr[k]["value"]), _child(tr[k]) is not None, bool) for k in obs_names]
        + [np.zeros(0, bool)]
    )
    rng = np.random.default_rng(seed_value + 1)
    # one directional derivative along the non-positive sites: which rows depend on θ
    tangent = jnp.asarray(rng.normal(size=x0.shape), x0.dtype)
    _, (dprec_dx, ddf_dx) = rows_jvp(x0, zpos0, tangent, no_tpos)
    valid = (
        supported
        & (np.asarray(dprec_dx) == 0)
        & (np.asarray(ddf_dx) == 0)
        & np.isfinite(prec0)
        & (prec0 > 0)
    )
    # per positive site: a directional derivative first, the Jacobian only if it is
    # non-zero somewhere, so a positive site without children costs one pass
    jac = {}
    for k in positive:
        value = zpos0[k]
        scalar = np.size(value) == 1  # then a unit tangent gives the Jacobian itself
        t = np.ones(np.shape(value)) if scalar else rng.normal(size=np.shape(value))
        tpos = {**no_tpos, k: jnp.asarray(t, jnp.result_type(value))}
        _, (dp, ddf) = rows_jvp(x0, zpos0, jnp.zeros_like(x0), tpos)
        dp, ddf = np.asarray(dp), np.asarray(ddf)
        if not (dp.any() or ddf.any()):
            jac[k] = None
            continue
        if scalar:
            jac[k] = dp[:, None], ddf[:, None]
            valid &= ddf == 0
            continue
        block = dataclasses.replace(program, site=k)
        jp, jdf = _evaluate(block, model_args, model_kwargs, x0, zpos0)
        jac[k] = np.asarray(jp), np.asarray(jdf)
        valid &= ~np.asarray(jdf).any(1)  # a df that depends on a site: not covered

    auto = tuple(k for k in positive if jac[k] is not None and jac[k][0][valid].any())
    hyper = _select_hyper(hyper_sites, auto, latent, positive)
    params = tuple(sorted(k for k in latent if k not in hyper))

    governed_rows = valid.copy()
    for k in positive:
        if k not in hyper and jac[k] is not None:
            governed_rows &= ~jac[k][0].any(1)  # scaled by a parameter: not governed
    counted_rows = governed_rows.copy()
    if not count_obs:
        counted_rows[n_lat:] = False
    weight = np.where(np.isinf(df0), 1.0, df0 / np.where(np.isinf(df0), 1.0, df0 + 3.0))

    def jac_of(k):
        size = int(np.size(z0[k]))
        return np.zeros((prec0.size, size)) if jac[k] is None else jac[k][0]

    hyper_infos, fallbacks, site_dep = {}, [], {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in hyper:
            shape = tuple(jnp.shape(z0[k]))
            dep = (jac_of(k) != 0) & governed_rows[:, None]  # (rows, elements)
            site_dep[k] = dep
            counted = dep & counted_rows[:, None]
            power = _snap(np.where(dep, jac_of(k) / prec0[:, None], 0.0))
            fisher = np.sum(np.where(counted, weight[:, None] * 0.5 * power**2, 0.0), 0)
            fn = _base(latent[k]["fn"])
            is_gamma = isinstance(fn, dist.Gamma)
            alpha = (
                np.broadcast_to(np.asarray(fn.concentration, float), shape)
                if is_gamma
                else np.ones(shape)
            )
            roles = [_role(power[dep[:, j], j]) for j in range(dep.shape[1])]
            role_arr = np.asarray(roles).reshape(shape)
            k_const = np.where(is_gamma & (role_arr == "precision"), alpha - 1.0, 0.0)
            fisher = fisher.reshape(shape)
            c = fisher + k_const
            fallback = c <= 0
            if fallback.any():
                fallbacks.append(k)
            c = np.where(fallback, fisher + alpha, c)
            governs = _site_names(dep[:n_lat].any(1), others, z0)
            if count_obs:
                governs += _site_names(
                    dep[n_lat:].any(1), obs_names, {n: tr[n]["value"] for n in obs_names}
                )
            site_roles = set(roles)
            hyper_infos[k] = HyperSite(
                shape=shape,
                alpha=alpha,
                q=counted.sum(0).reshape(shape),
                c=c,
                fallback=fallback,
                governs=governs,
                prior=type(fn).__name__,
                role=site_roles.pop() if len(site_roles) == 1 else "mixed",
                fisher=fisher,
                k=k_const,
            )

    # θ: the rows of the non-positive sites, then the positive sites left in θ
    lat_governed = dict(_split_rows(governed_rows[:n_lat], others, z0))
    means = _linear_means(
        model, model_args, model_kwargs, z0, others, obs_names, zpos0, governed_rows, rng
    )
    links = data_links = None
    if means is not None:
        latent_row = means[0] < n_lat
        links = tuple(a[latent_row] for a in means) if latent_row.any() else None
        obs_row = ~latent_row
        if obs_row.any():
            data_links = (means[0][obs_row] - n_lat, means[1][obs_row], means[2][obs_row])
    parents_of, children_of = {}, {}
    if links is not None:
        site_of = np.concatenate(
            [np.full(int(np.size(z0[k])), i) for i, k in enumerate(others)] + [np.zeros(0, int)]
        )
        for r, c in set(zip(site_of[links[0]].tolist(), site_of[links[1]].tolist())):
            parents_of.setdefault(others[r], set()).add(others[c])
            children_of.setdefault(others[c], set()).add(others[r])
    param_infos = {}
    for k in params:
        shape = tuple(jnp.shape(z0[k]))
        if k in positive:
            governed = np.zeros(shape, bool)
            by = ()
        else:
            governed = lat_governed[k].reshape(shape)
            by = tuple(
                h
                for h in hyper
                if dict(_split_rows(site_dep[h][:n_lat].any(1), others, z0))[k].any()
            )
        param_infos[k] = ParamSite(
            shape=shape,
            prior=type(_base(latent[k]["fn"])).__name__,
            governed=governed,
            governed_by=by,
            positive=k in positive,
            location_parents=tuple(sorted(parents_of.get(k, ()))),
            location_of=tuple(sorted(children_of.get(k, ()))),
        )
    if fallbacks:
        warnings.warn(
            f"Fisher + k <= 0 for hyperparameter site(s) {fallbacks}: the metric"
            " constant falls back to Q/2 + alpha (the Fisher information of the"
            " children and of a Gamma prior in log h; alpha = 1 for another prior)."
            " Sampling is still exact; see print(partition).",
            UserWarning,
            stacklevel=4,
        )
    return SitePartition(
        params=params,
        hyper=hyper,
        param_sites=param_infos,
        hyper_sites=hyper_infos,
        param_template={k: jnp.asarray(z0[k]) for k in params},
        coupling=None if links is None else _coupling_in_theta(links, others, params, z0),
        data_term=None if data_links is None else _data_in_theta(data_links, others, params, z0),
        observed=obs_names,
    )


def _split_rows(flags, names, values):
    """(name, that site's slice of ``flags``) for each site in ``names`` (sorted)."""
    offset = 0
    for k in names:
        size = int(np.size(values[k]))
        yield k, np.asarray(flags[offset : offset + size])
        offset += size


def _site_names(flags, names, values) -> tuple:
    """Names of the sites that own at least one flagged flat element."""
    out, offset = [], 0
    for k in sorted(names):
        size = int(np.size(values[k]))
        if np.asarray(flags[offset : offset + size]).any():
            out.append(k)
        offset += size
    return tuple(out)
