"""Warmup: NumPyro's step-size and Welford adaptation, plus the θ-metric term.

The step size is adapted by NumPyro's dual averaging and the Welford variance
of θ by its windowed schedule (``numpyro.infer.hmc_util.warmup_adapter``, the
only import of that undocumented module in this package). From the variance
v_i, and the window means of (∂U/∂θ_i)², of each θ element this module derives
the constant diagonals s and d of G_θ(η) = s ⊙ prior precision(η) + d
(docs/design.md §6):

- ``param_metric="prior*fisher"`` (default): G_θ,i(η) = s_i P_i(η), the prior
  precision scaled by s_i = max(F_i − 3 se(F_i), P̄_i) / P̄_i ≥ 1, with F_i and P̄_i
  as below. The metric keeps the prior's dependence on τ (as the paper's does,
  and as a non-centred parameterisation does implicitly), so θ moves with τ,
  while its size matches the posterior's mean curvature. On the BNN benchmarks
  this mixes the precisions 1.7× (sine) to 4× (diabetes) faster per gradient
  than ``"prior+fisher"``; on the likelihood-dominated logistic regression it
  is 0.8× as fast (benchmarks/results.md).
- ``param_metric="prior+fisher"``: d_i = max(F_i − P̄_i − 3 se(F_i), 0), where
  F_i is the window mean of (∂U/∂θ_i)², equal in expectation to the posterior's
  mean curvature E[∂²U/∂θ_i²], and P̄_i the mean prior precision over the same
  window: the "data precision" the likelihood adds. On a prior-only funnel
  F_i ≈ P̄_i, so d ≈ 0 and the metric is the paper's.
- ``param_metric="prior+variance"``: the same with F_i = 1/v_i, the Welford
  variance (as a diagonal mass matrix would use). Jensen gives d = 0 on a funnel,
  but in a BNN, whose weight marginals are multimodal (sign and permutation
  symmetries), v_i is near the prior's and hides the likelihood's curvature.
- ``param_metric="prior"``: the paper's choice, d_i = 0 for governed elements.

Elements whose prior is not a hyperparameter-scaled ``Normal`` get d_i = F_i
(or 1/v_i), a diagonal mass matrix. d changes only at the end of a window, so each
trajectory sees a fixed metric.

The θ elements free of η (the kernel's non-centred θ̃ ~ N(0, 1) and the ungoverned
ones) take 1/v_i instead, under the default, where the median over all of them of
F_i v_i exceeds :data:`SPREAD`. F v is 1 for a Gaussian marginal and at least 1 for any
(Cramér–Rao); it is large where the chains travel far along a ridge or through
narrow modes, as a BNN's non-centred weights do. There the mean curvature is a local
scale, not the distance a trajectory must cover (docs/design.md §3).
"""

from typing import NamedTuple

import numpy as np

import jax.numpy as jnp

from numpyro.infer.hmc_util import build_adaptation_schedule, dual_averaging, warmup_adapter

from numpyro_s3hmc._types import Array

PARAM_METRICS = ("prior*fisher", "prior+fisher", "prior+variance", "prior")
# the median of F_i v_i over the θ elements free of η above which their metric is 1/v_i:
# between BNN diabetes' (2.3–5.6 at every window end) and the BNN sine's (64–490),
# docs/design.md §3
SPREAD = 20.0
# the median of G_i v_i over those elements (their variance in the metric's units) below
# which the trajectory length counts them as whitened: Gaussian ones read 1.00–1.01
# (the funnels, eight schools), the wide ones 2.3–5 (BNN diabetes, a latent GP's values);
# docs/design.md §6
WHITENED = 1.5
# the fraction of half a period that the trajectory length takes where the elements free
# of η are Gaussian in the metric's units (or there are none): measured on the
# hierarchical suite and the funnels; not where they are wide or spread (a latent GP,
# BNNs), docs/design.md §6
SHORTER = 0.7
UNGOVERNED_MASSES = ("gradient", "variance", "fisher")


class MetricAdaptState(NamedTuple):
    data_precision: Array  # shape=(n_params,), d: constant term of G_θ
    prior_scale: Array  # shape=(n_params,), s: factor of the prior precision in G_θ
    precision_mean: Array  # shape=(n_params,), mean prior precision this window
    fisher_mean: Array  # shape=(n_params,), mean of (∂U/∂θ)² this window
    fisher_sq_mean: Array  # shape=(n_params,), mean of (∂U/∂θ)⁴, for its standard error
    count: Array  # shape=(), dtype=int32, draws in the two means
    trajectory_length: Array  # shape=(), integration time of the next trajectories
    # trajectory="auto": the scheme chosen (True: the no-U-turn tree), and per scheme
    # (static, tree) the trial window's squared jumps per coordinate of (θ, η), in
    # posterior variances, and the gradients they cost
    use_tree: Array  # shape=(), dtype=bool
    jumps: Array  # shape=(2, n_params + n_hyper)
    jump_grads: Array  # shape=(2,)
    # the step size the search found at the chain's start (or its last restart), and
    # the times warmup restarted the chain (:func:`trapped`)
    found_step_size: Array  # shape=()
    restarts: Array  # shape=(), dtype=int32


def metric_adapter(
    num_warmup: int,
    governed: Array,
    hyper_precision: Array,
    *,
    param_metric: str = "prior*fisher",
    adapt_step_size: bool = True,
    adapt_metric: bool = True,
    adapt_trajectory_length: bool = True,
    target_accept_prob: float = 0.8,
    parents: Array | None = None,
    ungoverned_mass: str = "fisher",
    free: Array | None = None,
    use_tree: bool = False,
):
    """Return ``(init_fn, update_fn)`` for the step size, θ metric and path length.

    ``init_fn(z, rng_key, step_size, data_precision, trajectory_length)`` and
    ``update_fn(i, accept_prob, z, prior_precision, wa_state, metric_state)``,
    where ``z`` is the flat (θ, η). Welford runs over θ and η together.

    The trajectory length at each window's end is :func:`_trajectory_length`: 0.7 ×
    half a period of the slowest oscillation, were the target Gaussian in the metric's
    units, or the whole half period where the elements free of η are not Gaussian in
    them. On the centred Gamma funnel the slowest direction is log τ, and this gives
    ≈ 9 (0.7 × 12.9).
    """
    if ungoverned_mass not in UNGOVERNED_MASSES:
        raise ValueError(
            f"ungoverned_mass must be one of {UNGOVERNED_MASSES}, got {ungoverned_mass!r}."
        )
    if param_metric not in PARAM_METRICS:
        raise ValueError(f"param_metric must be one of {PARAM_METRICS}, got {param_metric!r}.")
    governed = np.asarray(governed, bool)  # static: init may run under pmap
    # a location parent's curvature is the prior-factor diagonal plus an excess (its
    # own data), as for a governed element, even where it has no prior factor itself
    excess = governed | (False if parents is None else np.asarray(parents, bool))
    free = np.zeros(governed.shape, bool) if free is None else np.asarray(free, bool)
    c = np.asarray(hyper_precision)
    n = governed.size
    size = n + c.size
    adapt_metric = adapt_metric and size > 0
    wa_init, wa_update = warmup_adapter(
        num_warmup,
        adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_metric,
        dense_mass=False,
        target_accept_prob=target_accept_prob,
    )
    num_windows = len(build_adaptation_schedule(num_warmup))

    def init_fn(z, rng_key, step_size, data_precision, trajectory_length):
        wa_state = wa_init((z,), rng_key, step_size, mass_matrix_size=max(size, 1))
        zeros = jnp.zeros_like(data_precision)
        length = jnp.asarray(trajectory_length, data_precision.dtype)
        ones = jnp.ones_like(data_precision)
        jumps = jnp.zeros((2, max(size, 1)), data_precision.dtype)
        return wa_state, MetricAdaptState(
            data_precision,
            ones,
            zeros,
            zeros,
            zeros,
            jnp.int32(0),
            length,
            jnp.bool_(use_tree),
            jumps,
            jnp.zeros(2, data_precision.dtype),
            jnp.asarray(step_size, data_precision.dtype),
            jnp.int32(0),
        )

    def _ungoverned(fisher, var_theta):
        """The mass of an element no prior factor describes (docs/design.md §6)."""
        if ungoverned_mass == "variance" or param_metric in ("prior", "prior+variance"):
            return 1.0 / var_theta
        if ungoverned_mass == "fisher":  # nutpie's sqrt(Var ∇U / Var x), E[∇U] = 0
            return jnp.where(fisher > 0, jnp.sqrt(fisher / var_theta), 1.0 / var_theta)
        return jnp.where(fisher > 0, fisher, 1.0 / var_theta)  # the mean squared gradient

    def _param_constants(metric_state, var_theta):
        """d and s of G_θ from this window's means and θ's Welford variance, the
        variance in the metric's units of the elements free of η (1 if none), and
        whether the trajectory length is :data:`SHORTER` than half a period (where
        those elements are Gaussian in the metric's units, or there are none)."""
        d = metric_state.data_precision
        mean, fisher = metric_state.precision_mean, metric_state.fisher_mean
        if param_metric in ("prior*fisher", "prior+fisher"):
            # E[(∂U/∂θ_i)²] = E[∂²U/∂θ_i²] under the posterior: its mean curvature,
            # which a multimodal marginal (a BNN's) hides from the variance
            total = jnp.where(fisher > 0, fisher, 1.0 / var_theta)
            # only what stands clear of the estimate's noise (3 standard errors,
            # ignoring autocorrelation): on a prior-only funnel F ≈ P̄ and d stays 0
            spread = jnp.maximum(metric_state.fisher_sq_mean - fisher**2, 0.0)
            noise = 3.0 * jnp.sqrt(spread / metric_state.count)
        else:
            total, noise = 1.0 / var_theta, 0.0
        extra = jnp.maximum(total - mean - noise, 0.0) if param_metric != "prior" else 0.0 * d
        scale = metric_state.prior_scale
        if param_metric == "prior*fisher":
            # the same excess curvature, as a factor of the mean prior precision
            scaled = governed & (mean > 0)
            scale = jnp.where(scaled, 1.0 + extra / mean, 1.0).astype(d.dtype)
            extra = jnp.where(scaled, 0.0, extra)
        d = jnp.where(excess, extra, _ungoverned(fisher, var_theta))
        units = jnp.ones((), var_theta.dtype)
        short = jnp.bool_(True)
        if param_metric == "prior*fisher" and free.any():
            # the elements free of η, all together: 1/v where F·v is large (docs §3)
            spread = jnp.median((fisher * var_theta)[free]) > SPREAD
            # a non-centred θ̃'s prior precision is 1: scale it to 1/v
            by_variance = 1.0 / (var_theta * jnp.maximum(mean, 1e-30))
            scale = jnp.where(spread & free & governed, by_variance, scale)
            d = jnp.where(spread & free & ~governed, 1.0 / var_theta, d)
            # their variance in the metric's units, G·v with G = sP̄ + d (their prior
            # precision is constant): about F·v where they keep F, √(F·v) under the
            # ungoverned √(F/v), 1 under 1/v; 1 below WHITENED and where a window's
            # gradients overflowed
            units = jnp.median(((scale * mean + d) * var_theta)[free])
            wide = jnp.isfinite(units) & (units >= WHITENED)
            units = jnp.where(wide, units, 1.0)
            # wide (a latent GP's values, BNN diabetes' layers) or spread (BNN sine's):
            # their median understates the slowest direction, and 0.7 of the length lost
            short = ~wide & ~spread
        return d.astype(metric_state.data_precision.dtype), scale, units, short

    def update_fn(i, accept_prob, z, grad_theta, prior_precision, wa_state, metric_state):
        in_window = (0 < wa_state.window_idx) & (wa_state.window_idx < num_windows - 1)
        metric_state = _accumulate(metric_state, in_window, prior_precision, grad_theta)
        new_wa_state = wa_update(i, accept_prob, (z,), wa_state)
        if not adapt_metric:
            return new_wa_state, metric_state
        closed = in_window & (new_wa_state.window_idx != wa_state.window_idx)
        variance = new_wa_state.inverse_mass_matrix
        var_theta, var_eta = variance[:n], variance[n:size]
        d, scale, theta_units, short = _param_constants(metric_state, var_theta)
        # a window that met overflowing gradients (a chain far out in float32: its
        # (∂U/∂θ)⁴ is inf) leaves non-finite constants; those elements keep the last
        # window's, so that the chain can still come in
        finite = jnp.isfinite(d) & jnp.isfinite(scale) & (scale > 0)
        d = jnp.where(finite, d, metric_state.data_precision)
        scale = jnp.where(finite, scale, metric_state.prior_scale)
        length = metric_state.trajectory_length
        if adapt_trajectory_length:
            adapted = _trajectory_length(var_eta, c, theta_units, short, d.dtype)
            length = jnp.where(closed, adapted, length)
        zeros = jnp.zeros_like(metric_state.precision_mean)
        metric_state = metric_state._replace(
            data_precision=jnp.where(closed, d, metric_state.data_precision),
            prior_scale=jnp.where(closed, scale, metric_state.prior_scale),
            precision_mean=jnp.where(closed, zeros, metric_state.precision_mean),
            fisher_mean=jnp.where(closed, zeros, metric_state.fisher_mean),
            fisher_sq_mean=jnp.where(closed, zeros, metric_state.fisher_sq_mean),
            count=jnp.where(closed, 0, metric_state.count),
            trajectory_length=length,
        )
        return new_wa_state, metric_state

    return init_fn, update_fn


def _accumulate(metric_state, in_window, prior_precision, grad_theta):
    """One draw into the window means of P, (∂U/∂θ)² and (∂U/∂θ)⁴."""
    count = jnp.where(in_window, metric_state.count + 1, metric_state.count)
    weight = 1.0 / jnp.maximum(count, 1)

    def update(mean, x):
        return jnp.where(in_window, mean + (x - mean) * weight, mean)

    g2 = grad_theta**2
    return metric_state._replace(
        precision_mean=update(metric_state.precision_mean, prior_precision),
        fisher_mean=update(metric_state.fisher_mean, g2),
        fisher_sq_mean=update(metric_state.fisher_sq_mean, g2**2),
        count=count,
    )


def _trajectory_length(var_eta, c, theta_units, short, dtype):
    """π × the largest posterior sd in the metric's units, × :data:`SHORTER` where
    ``short``: sqrt(v_l c_l) over η and, for θ, the square root of ``theta_units``, the
    median G·v of the elements free of η (1 where there are none): the governed
    elements count as whitened, since their marginal variance is no guide where it is
    multimodal, as BNN weights are. Where the free elements are Gaussian in the
    metric's units, 0.7 of that half period gained 1.2–2.6× on hierarchical models and
    funnels; where they are wide or spread it lost on a latent GP and on BNNs
    (docs/design.md §6)."""
    scales = jnp.concatenate([jnp.full(1, theta_units, dtype), var_eta * c.astype(dtype)])
    length = jnp.pi * jnp.sqrt(jnp.max(scales))
    return jnp.where(short, SHORTER * length, length)


MIN_TRIAL = 100  # transitions in trajectory="auto"'s trial, half of them each scheme's


def trial_window(num_warmup: int) -> tuple[int, int] | None:
    """The warmup iterations (first, last) in which ``trajectory="auto"`` tries both
    schemes: the first half of the last of NumPyro's slow windows. Its metric is
    the nearest to the final one that a window of iterations sees (earlier, the
    step size and the metric's scale are far from theirs at the end, and the two
    schemes compare differently), and the chosen scheme keeps the second half and
    the final buffer to adapt the step size to itself; ``None`` where that half
    holds fewer than :data:`MIN_TRIAL` transitions (below 400 warmup iterations):
    too few jumps to compare, and the static length is kept."""
    slow = build_adaptation_schedule(num_warmup)[1:-1] if num_warmup > 0 else []
    if not slow:
        return None
    first, last = slow[-1]
    end = first + (last - first) // 2
    return (int(first), int(end)) if end - first + 1 >= MIN_TRIAL else None


def record_jump(metric_state, tree, start, end, variance, grads):
    """Add one transition's squared jump ``(end − start)² / variance`` per
    coordinate, and its gradients, to the sums of its scheme (``tree``: the
    no-U-turn tree, else the static length)."""
    jump = ((end - start) ** 2 / variance).astype(metric_state.jumps.dtype)
    row = jnp.asarray(tree, jnp.int32)
    return metric_state._replace(
        jumps=metric_state.jumps.at[row].add(jump),
        jump_grads=metric_state.jump_grads.at[row].add(grads),
    )


def prefer_tree(metric_state, num_params: int) -> Array:
    """Whether the tree's trial beat the static length's, by the expected squared
    jump per gradient of the slowest-moving coordinates: the smallest over η and the
    10% quantile over θ (a BNN's slow weights are many; one θ element's estimate is
    too noisy to be the minimum), the smaller of the two (docs/design.md §6)."""
    rate = metric_state.jumps / jnp.maximum(metric_state.jump_grads, 1.0)[:, None]
    worst = []
    if num_params > 0:
        worst.append(jnp.quantile(rate[:, :num_params], 0.1, axis=1))
    if rate.shape[1] > num_params:
        worst.append(jnp.min(rate[:, num_params:], axis=1))
    score = jnp.min(jnp.stack(worst), axis=0)
    return score[1] > score[0]


# a chain is trapped where its step size fell this many times below the one found at its
# start, and its potential lies this far above the restart point's (restart_gap)
RESTART_STEP_RATIO = 100.0


def restart_windows(num_warmup: int) -> tuple[int, ...]:
    """The warmup iterations at which a trapped chain restarts: the first of each of
    NumPyro's windows after the opening one that begins in warmup's first half (late
    enough that a chain coming in from a far start has come in, early enough that the
    restarted chain has most of warmup to adapt afresh)."""
    schedule = build_adaptation_schedule(num_warmup) if num_warmup > 0 else []
    return tuple(int(s) for s, _ in schedule[1:] if s <= num_warmup // 2)


def restart_gap(dim: int) -> float:
    """The nats by which a trapped chain's potential exceeds the restart point's: 10 plus
    5 standard deviations of a Gaussian posterior's potential in ``dim`` dimensions
    (√(dim/2)), far outside what two draws from the bulk differ by."""
    return 10.0 + 5.0 * float(np.sqrt(dim / 2.0))


def trapped(potential_energy, step_size, metric_state, restart_energy, dim: int) -> Array:
    """Whether a chain is trapped in warmup: its step size has collapsed by
    :data:`RESTART_STEP_RATIO` from the one found at its start, and its potential lies
    :func:`restart_gap` above the restart point's (or is not finite). A chain in a
    stiff tail far above the bulk (a BNN whose hidden units saturated, log τ = −42:
    step sizes of 1e-8, docs/design.md §6) meets both; one deep in a funnel's neck
    has the small step size but a lower potential, and one in a wide mode a higher
    potential but no collapse."""
    collapsed = step_size * RESTART_STEP_RATIO < metric_state.found_step_size
    above = ~(potential_energy - restart_energy <= restart_gap(dim))
    return collapsed & above


def restart_step_size(wa_state, step_size: Array):
    """Restart dual averaging from ``step_size`` (as NumPyro does at window ends)."""
    ss_init, _ = dual_averaging()
    ss_state = ss_init(jnp.log(10.0) + jnp.log(step_size))
    return wa_state._replace(step_size=step_size, ss_state=ss_state)
