"""Run several MCMC kernels on one model and compare their efficiency.

:func:`compare_samplers` runs each kernel with NumPyro's ``MCMC`` on the same
data, key and number of draws, converts each run with ArviZ's ``from_numpyro``
(0.x or 1.x, with the ``log_likelihood`` group either way) and returns a table
(one row per sampler) and the converted runs.
:func:`plot_comparison` draws the table's efficiency columns and the trace and
rank plots of the hyperparameters.

What the time columns mean
--------------------------
JAX reports the time it spends tracing, lowering and compiling through
``jax.monitoring`` (the ``/jax/core/compile/...`` events). The union of those
intervals during a run is its **compile time**; the rest is sampling, model
initialisation and bookkeeping.

- ``wall (s)``: warmup plus sampling, everything included (``init``, tracing,
  compiling, running). Before the first timed run each model is initialised
  once, untimed, so that the first sampler does not pay alone for what a
  process compiles once (JAX's own start-up and the model's eager operations),
  which would otherwise go to whichever sampler runs first.
- ``ESS/s (wall)``: min bulk ESS per second of that wall time: the rate a user
  sees end to end, compiling included.
- ``compile (s)``: the part of the wall time spent by JAX tracing, lowering and
  compiling, in both phases.
- ``sampling (s)``: the post-warmup phase alone, minus its compile time: the
  time the draws in the table cost once compiled. ``ESS/s`` divides by it.

Gradient counts are the post-warmup gradient evaluations of the potential,
summed over chains: S3HMC's ``num_grad_evals`` field, NumPyro HMC's and NUTS's
``num_steps`` (one gradient per leapfrog step). Kernels with neither get NaN.
"""

import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from operator import attrgetter

import numpy as np
import pandas as pd

import jax
import jax.monitoring

from numpyro.handlers import seed, trace
from numpyro.infer import HMC, MCMC, NUTS
from numpyro.infer.hmc import HMCState
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model

from numpyro_s3hmc._arviz import arviz, dataset, datatree_name, from_numpyro, is_arviz_1
from numpyro_s3hmc.kernel import S3HMC, S3HMCState
from numpyro_s3hmc.partition import partition_sites

__all__ = ["compare_samplers", "hyperparameter_sites", "plot_comparison"]

# fields to collect when the kernel's state has them; the first gradient
# counter found is used
_GRAD_FIELDS = ("num_grad_evals", "num_steps", "hmc_state.num_steps")
_STAT_FIELDS = (
    "diverging",
    "accept_prob",
    "energy",
    "potential_energy",
    "adapt_state.step_size",
)
_COMPILE_EVENT_PREFIX = "/jax/core/compile/"
HYPER_PREFIX = "ESS bulk "


def _model_sites(model: Callable, model_args: tuple, model_kwargs: dict) -> list:
    """Names of the latent sample sites of ``model``."""
    tr = trace(seed(model, 0)).get_trace(*model_args, **model_kwargs)
    return [
        name for name, site in tr.items() if site["type"] == "sample" and not site["is_observed"]
    ]


def hyperparameter_sites(model: Callable, *model_args, **model_kwargs) -> tuple[str, ...]:
    """The sites S3HMC would sample as hyperparameters in ``model`` (every positive
    latent site that sets the scale of a ``Normal`` or ``StudentT`` child; see
    :func:`~numpyro_s3hmc.partition_sites`), in the partition's order;
    none where the model has sites S3HMC does not take (discrete ones).

    This is how :func:`compare_samplers` finds the hyperparameters of a kernel
    that is not S3HMC (an S3HMC kernel reports its own, ``kernel.partition.hyper``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    ...     sigma = numpyro.sample("sigma", dist.HalfCauchy(1.0))
    ...     numpyro.sample("x", dist.Normal(0.0, sigma / jnp.sqrt(tau)).expand([3]))
    >>> hyperparameter_sites(model)
    ('sigma', 'tau')
    """
    try:
        partition = partition_sites(model, model_args, model_kwargs)
    except ValueError:  # a site S3HMC refuses (the error names it); nothing to score
        return ()
    return tuple(partition.hyper)


class _CompileTimer:
    """Wall time spent in JAX's tracing, lowering and compiling, as reported by
    ``jax.monitoring`` (the union of the reported intervals, so nested traces
    count once)."""

    def __init__(self):
        self.spans = []

    def __call__(self, event, start_time, end_time, **kwargs):
        if event.startswith(_COMPILE_EVENT_PREFIX):
            self.spans.append((start_time, end_time))

    def seconds(self, start: float = -np.inf, end: float = np.inf) -> float:
        total, reach = 0.0, -np.inf
        for a, b in sorted(self.spans):
            a, b = max(a, start, reach), min(b, end)
            if b > a:
                total += b - a
                reach = b
        return total


@contextmanager
def _compile_timer():
    timer = _CompileTimer()
    jax.monitoring.register_event_time_span_listener(timer)
    try:
        yield timer
    finally:
        jax.monitoring.unregister_event_time_span_listener(timer)


def _has_field(state, field: str) -> bool:
    try:
        attrgetter(field)(state)
    except AttributeError:
        return False
    return True


def _known_state_fields(kernel: MCMCKernel) -> Callable[[str], bool] | None:
    """Whether a field exists in the kernel's state, for the kernels whose state
    type is known before ``init`` (S3HMC, NumPyro's HMC and NUTS); else None."""
    if isinstance(kernel, S3HMC):
        names = S3HMCState._fields
    elif type(kernel) in (HMC, NUTS):  # not subclasses such as HMCECS: other states
        names = HMCState._fields
    else:
        return None
    return lambda field: field.split(".")[0] in names


def _fields_to_collect(has_field: Callable[[str], bool] | None) -> tuple[str, ...] | None:
    """The stat fields and gradient counter the kernel's state has; a kernel that
    wraps HMC (``HMCGibbs``) has them on its ``hmc_state``."""
    if has_field is None:
        return None
    grad_field = next((f for f in _GRAD_FIELDS if has_field(f)), None)
    fields = tuple(
        next((g for g in (f, "hmc_state." + f) if has_field(g)), None) for f in _STAT_FIELDS
    )
    return tuple(f for f in fields if f) + ((grad_field,) if grad_field else ())


def _hyper_names(kernel: MCMCKernel, model_args: tuple, model_kwargs: dict) -> list:
    if isinstance(kernel, S3HMC):
        # the user's model's blocks with the kernel's settings (once a site is non-centred,
        # kernel.partition describes the coordinates it samples, where τ may be plain)
        return list(
            partition_sites(
                kernel.model,
                model_args,
                model_kwargs,
                hyper_sites=kernel._hyper_sites,
                count_observations=kernel._count_observations,
            ).hyper
        )
    return list(hyperparameter_sites(kernel.model, *model_args, **model_kwargs))


def _min_over(ds) -> float:
    values = [np.ravel(ds[name].values) for name in ds.data_vars]
    return float(np.min(np.concatenate(values))) if values else np.nan


def _max_over(ds) -> float:
    values = [np.ravel(ds[name].values) for name in ds.data_vars]
    return float(np.max(np.concatenate(values))) if values else np.nan


def _round_sig(x: float, digits: int = 3) -> float:
    if not np.isfinite(x) or x == 0:
        return x
    return float(np.round(x, digits - 1 - int(np.floor(np.log10(abs(x))))))


def _round_table(table: pd.DataFrame) -> pd.DataFrame:
    """Round each column to the precision it can be read at."""
    out = table.copy()
    for col in out.columns:
        if col.endswith("(s)") or col in ("ESS/s", "ESS/s (wall)", "ESS/1k grads", "grads/draw"):
            out[col] = out[col].map(_round_sig)
        elif col == "max R-hat":
            out[col] = out[col].round(3)
        elif col.startswith(("min ESS", HYPER_PREFIX)) or col in ("divergences", "grad evals"):
            out[col] = out[col].round().astype("Int64")
    return out


def _warm_up(kernels, rng_key, model_args: tuple, model_kwargs: dict) -> None:
    """Initialise each distinct model once, untimed: what a process compiles once
    (JAX's start-up, the model's eager operations) is then charged to no sampler."""
    models = []
    for kernel in kernels:
        model = getattr(kernel, "model", None)
        if model is not None and all(model is not m for m in models):
            models.append(model)
            try:
                initialize_model(rng_key, model, model_args=model_args, model_kwargs=model_kwargs)
            except Exception:  # noqa: BLE001 - only a warm-up: the timed run reports any error
                pass


def compare_samplers(
    kernels: Mapping[str, MCMCKernel],
    *model_args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 2,
    rng_key: jax.Array | None = None,
    chain_method: str = "sequential",
    progress_bar: bool = True,
    var_names: list[str] | tuple[str, ...] | None = None,
    **model_kwargs,
) -> tuple[pd.DataFrame, dict]:
    """Run each kernel on the same model arguments and tabulate its efficiency.

    Every kernel gets its own ``MCMC`` with the same settings and the same
    ``rng_key``; warmup (``MCMC.warmup``) and sampling (``MCMC.run``) are timed
    separately. Each run is converted with ArviZ's ``from_numpyro``.

    Parameters
    ----------
    kernels : a mapping from a sampler's name to an unused ``MCMCKernel``
        built from a model, e.g. ``{"S3HMC": S3HMC(model), "NUTS": NUTS(model)}``.
    *model_args, **model_kwargs : the model's arguments (data), the same for all.
    num_warmup, num_samples, num_chains, chain_method : passed to ``MCMC``.
    rng_key : the key of every run (default ``jax.random.PRNGKey(0)``).
    progress_bar : NumPyro's progress bars, and one line per sampler when done.
    var_names : the posterior variables the ESS and R-hat columns range over
        (default: every latent sample site of each kernel's model). Give the
        same names to compare reparameterisations of one model, e.g. the
        centred sites, which a non-centred model records as deterministic.

    Returns
    -------
    table : ``pandas.DataFrame``, one row per sampler (index ``sampler``), rounded
        for reading. Columns:

        - ``wall (s)``, ``compile (s)``, ``sampling (s)``: see the module
          docstring; warmup is in the wall time only.
        - ``min ESS bulk``, ``min ESS tail``: the smallest ``az.ess`` over every
          element of every latent sample site (deterministic sites excluded),
          or of the ``var_names``.
        - ``ESS/s``: min bulk ESS / sampling time; ``ESS/s (wall)``: / wall time.
        - ``grad evals``: post-warmup gradient evaluations, all chains;
          ``grads/draw`` per draw.
        - ``ESS/1k grads``: min bulk ESS per 1,000 post-warmup gradients.
        - ``max R-hat``: the largest ``az.rhat`` over the same elements (NaN
          with one chain: ArviZ needs two).
        - ``divergences``: post-warmup, all chains.
        - ``ESS bulk <site>``: for each hyperparameter (S3HMC's
          ``kernel.partition.hyper``, otherwise :func:`hyperparameter_sites`;
          the union over samplers), its smallest bulk ESS over elements.

        ``table.attrs["hyper"]`` lists the hyperparameter sites, and
        ``table.attrs["tree"]`` how many chains of each S3HMC run chose the no-U-turn
        tree over the static length in warmup (``trajectory="auto"``).
    idatas : ``{name: run}``, each an ``arviz.InferenceData`` (ArviZ 0.x) or an
        ``xarray.DataTree`` (ArviZ 1.x), with the ``log_likelihood`` group (so
        ``az.loo`` works) and the sample_stats of the collected fields
        (``lp``, ``acceptance_rate``, ``diverging``,
        ``energy``, ``step_size`` and the gradient counter).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import NUTS
    >>> from numpyro_s3hmc import S3HMC
    >>> def funnel():
    ...     tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([50]))
    >>> table, idatas = compare_samplers(
    ...     {"S3HMC": S3HMC(funnel), "NUTS": NUTS(funnel)}
    ... )  # doctest: +SKIP
    >>> print(table.T)  # doctest: +SKIP
    """
    if not kernels:
        raise ValueError("kernels must name at least one MCMCKernel.")
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    rows, idatas, trees = {}, {}, {}
    _warm_up(kernels.values(), rng_key, model_args, model_kwargs)
    # every sampler is scored on the hyperparameters any of them has, so that NUTS
    # after LocScaleReparam (whose scales scale nothing directly) gets the columns too
    all_hyper = []
    for kernel in kernels.values():
        all_hyper += [
            h for h in _hyper_names(kernel, model_args, model_kwargs) if h not in all_hyper
        ]
    for name, kernel in kernels.items():
        if progress_bar:
            print(
                f"[compare] {name}: {num_warmup} warmup + {num_samples} draws x {num_chains} chains"
            )
        mcmc = MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method=chain_method,
            progress_bar=progress_bar,
        )
        # the same fields in both phases, so that NumPyro reuses the compiled step
        fields = _fields_to_collect(_known_state_fields(kernel))
        with _compile_timer() as timer:
            t0 = time.time()
            mcmc.warmup(
                rng_key,
                *model_args,
                extra_fields=fields or (),
                collect_warmup=False,
                **model_kwargs,
            )
            jax.block_until_ready(mcmc.post_warmup_state)
            t1 = time.time()
            state = mcmc.post_warmup_state
            if fields is None:  # an unknown kernel: read its state
                fields = _fields_to_collect(lambda f: _has_field(state, f))
            mcmc.run(state.rng_key, *model_args, extra_fields=fields, **model_kwargs)
            jax.block_until_ready((mcmc.last_state, mcmc.get_samples(), mcmc.get_extra_fields()))
            t2 = time.time()
        grad_field = next((f for f in _GRAD_FIELDS if f in fields), None)
        compile_total = timer.seconds(t0, t2)
        sampling = (t2 - t1) - timer.seconds(t1, t2)

        idata = from_numpyro(mcmc)
        idatas[name] = idata
        draws = dataset(idata.posterior)
        latent = _model_sites(kernel.model, model_args, model_kwargs)
        # the run's names for the sites (ArviZ 1.x writes net/Dense_0.kernel as net.Dense_0.kernel)
        name_in_run = datatree_name if is_arviz_1() else str
        unknown = [v for v in var_names or () if name_in_run(v) not in draws.data_vars]
        if unknown:
            raise ValueError(
                f"var_names names {unknown}, which {name}'s draws do not have; its sites:"
                f" {sorted(draws.data_vars)}."
            )
        latent = [name_in_run(v) for v in var_names or latent]
        latent = [v for v in latent if v in draws.data_vars]
        hyper = [name_in_run(v) for v in all_hyper]
        hyper = [v for v in hyper if v in draws.data_vars]

        posterior = draws[latent + [h for h in hyper if h not in latent]]
        az = arviz()
        # a chain that never moved (possible in a short run) has zero variance:
        # its R-hat is inf and its ESS nan, reported as such, not as a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            ess_bulk = az.ess(posterior, method="bulk")
            ess_tail = az.ess(posterior, method="tail")
            # R-hat compares chains: with one there is nothing to compare (NaN)
            max_rhat = _max_over(az.rhat(posterior)[latent]) if num_chains > 1 else np.nan
        min_bulk = _min_over(ess_bulk[latent])
        extra = mcmc.get_extra_fields()
        grads = float(np.sum(extra[grad_field])) if grad_field else np.nan
        diverging = next((f for f in fields if f.endswith("diverging")), None)
        divergences = float(np.sum(extra[diverging])) if diverging else np.nan
        row = {
            "wall (s)": t2 - t0,
            "compile (s)": compile_total,
            "sampling (s)": sampling,
            "min ESS bulk": min_bulk,
            "min ESS tail": _min_over(ess_tail[latent]),
            "ESS/s": min_bulk / sampling,
            "ESS/s (wall)": min_bulk / (t2 - t0),
            "grad evals": grads,
            "grads/draw": grads / (num_samples * num_chains),
            "ESS/1k grads": 1000.0 * min_bulk / grads,
            "max R-hat": max_rhat,
            "divergences": divergences,
        }
        for h in hyper:
            row[HYPER_PREFIX + h] = float(np.min(ess_bulk[h].values))
        rows[name] = row
        use_tree = getattr(getattr(mcmc.last_state, "metric_state", None), "use_tree", None)
        if use_tree is not None:  # S3HMC: each chain's trajectory scheme
            trees[name] = int(np.sum(use_tree))
        if progress_bar:
            print(
                f"[compare] {name}: {row['wall (s)']:.1f} s wall ({compile_total:.1f} s compiling), "
                f"min bulk ESS {min_bulk:.0f}, {row['grads/draw']:.1f} gradients a draw, "
                f"{divergences:.0f} divergences"
            )

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "sampler"
    hyper_cols = [HYPER_PREFIX + h for h in all_hyper]
    table = _round_table(table[[c for c in table.columns if c not in hyper_cols] + hyper_cols])
    table.attrs["hyper"] = tuple(all_hyper)
    table.attrs["tree"] = trees
    return table, idatas


def _hyper_elements(posterior, name: str) -> list[tuple[str, np.ndarray]]:
    """(label, draws of shape (chain, draw)) for each element of a posterior site."""
    values = posterior[name].values
    flat = values.reshape(values.shape[:2] + (-1,))
    if values.ndim == 2:
        return [(name, flat[..., 0])]
    return [
        (f"{name}[{','.join(map(str, idx))}]", flat[..., i])
        for i, idx in enumerate(np.ndindex(values.shape[2:]))
    ]


def _rank_plot(ax, draws: np.ndarray, bins: int) -> None:
    """ArviZ's rank plot (bars): a histogram of each chain's ranks in the pooled
    draws; uniform when the chains mix."""
    num_chains = draws.shape[0]
    ranks = np.argsort(np.argsort(draws, axis=None)).reshape(draws.shape)
    edges = np.linspace(0, draws.size, bins + 1)
    expected = draws.shape[1] / bins
    for c in range(num_chains):
        counts, _ = np.histogram(ranks[c], bins=edges)
        offset = c * 1.6 * expected
        ax.bar(
            edges[:-1],
            counts,
            width=np.diff(edges),
            bottom=offset,
            align="edge",
            color=f"C{c}",
            alpha=0.8,
            edgecolor="white",
            linewidth=0.3,
        )
        ax.axhline(offset + expected, color="k", linestyle="--", linewidth=0.6)
    ax.set_yticks([c * 1.6 * expected + expected / 2 for c in range(num_chains)])
    ax.set_yticklabels([str(c) for c in range(num_chains)])
    ax.set_ylabel("chain")
    ax.set_xlabel("rank (all chains)")


def _bar(ax, table: pd.DataFrame, column: str, title: str) -> None:
    values = table[column].astype(float).to_numpy()
    bars = ax.bar(table.index.astype(str), values, color=[f"C{i}" for i in range(len(table))])
    ax.bar_label(
        bars, labels=[f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in values], padding=2
    )
    ax.set_title(title)
    ax.set_ylabel(column)
    ax.margins(y=0.15)


def plot_comparison(
    table: pd.DataFrame,
    idatas: Mapping,
    hyper: list[str] | tuple[str, ...] | None = None,
):
    """The comparison as one figure.

    Top row: min bulk ESS per second of sampling and per 1,000 gradient
    evaluations, one bar per sampler. Below: one row per hyperparameter element
    and, for each sampler side by side, its trace (one line per chain) and rank
    plot (histograms of each chain's ranks among all draws, roughly flat when the
    chains mix; the dashed lines are the uniform level).

    Parameters
    ----------
    table, idatas : what :func:`compare_samplers` returns (ArviZ 0.x
        InferenceData or 1.x DataTree).
    hyper : the sites to plot (default ``table.attrs["hyper"]``, or the sites of
        the ``ESS bulk <site>`` columns).

    Returns
    -------
    a ``matplotlib.figure.Figure`` made without pyplot (safe on any backend;
    save it with ``fig.savefig``).
    """
    if hyper is None:
        hyper = table.attrs.get("hyper") or [
            c[len(HYPER_PREFIX) :] for c in table.columns if c.startswith(HYPER_PREFIX)
        ]
    from matplotlib.figure import Figure  # loaded when a figure is drawn

    names = [n for n in table.index if n in idatas]
    posteriors = {n: dataset(idatas[n].posterior) for n in names}
    rows = []  # (label, {sampler: draws})
    for h in hyper:
        per_sampler = {
            n: dict(_hyper_elements(posteriors[n], h)) for n in names if h in posteriors[n]
        }
        labels = next((list(d) for d in per_sampler.values()), [])
        rows += [(label, {n: d[label] for n, d in per_sampler.items()}) for label in labels]

    ncols = 2 * max(len(names), 1)
    fig = Figure(figsize=(3.2 * ncols, 3.2 + 2.4 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(1 + len(rows), ncols, height_ratios=[1.3] + [1.0] * len(rows))
    half = ncols // 2
    _bar(fig.add_subplot(grid[0, :half]), table, "ESS/s", "min bulk ESS per second of sampling")
    _bar(fig.add_subplot(grid[0, half:]), table, "ESS/1k grads", "min bulk ESS per 1,000 gradients")

    for r, (label, draws_by_sampler) in enumerate(rows, start=1):
        for j, name in enumerate(names):
            ax_trace = fig.add_subplot(grid[r, 2 * j])
            ax_rank = fig.add_subplot(grid[r, 2 * j + 1])
            if name not in draws_by_sampler:
                for ax in (ax_trace, ax_rank):
                    ax.set_axis_off()
                continue
            draws = draws_by_sampler[name]
            for c in range(draws.shape[0]):
                ax_trace.plot(draws[c], color=f"C{c}", linewidth=0.5, alpha=0.8)
            ax_trace.set_title(f"{name}: {label}")
            ax_trace.set_xlabel("draw")
            bins = int(np.clip(draws.shape[1] // 25, 2, 20))
            _rank_plot(ax_rank, draws, bins)
            ax_rank.set_title(f"{name}: {label} ranks")
    return fig
