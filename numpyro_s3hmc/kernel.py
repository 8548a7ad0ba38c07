"""The S3HMC transition: a pure step, and the NumPyro ``MCMCKernel`` around it."""

import copy
import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp
from jax import random

from numpyro.infer.hmc_util import HMCAdaptState, build_adaptation_schedule
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model
from numpyro.util import identity, is_prng_key

from numpyro_s3hmc import trajectory as trajectories
from numpyro_s3hmc._types import Array, PRNGKey
from numpyro_s3hmc.adaptation import (
    MetricAdaptState,
    metric_adapter,
    prefer_tree,
    record_jump,
    restart_step_size,
    restart_windows,
    trapped,
    trial_window,
)
from numpyro_s3hmc.integrators import INTEGRATORS, IntegratorState, build_integrator
from numpyro_s3hmc.metrics import (
    SemiSeparableMetric,
    hamiltonian_and_velocity,
    param_diagonal,
    sample_momentum,
)
from numpyro_s3hmc.partition import (
    SitePartition,
    data_precision_fn,
    decentred_names,
    merge_z,
    noncentred,
    noncentred_candidates,
    partition_sites,
    prior_precision_fn,
    split_z,
    standardise,
)
from numpyro_s3hmc.trajectory import TRAJECTORIES, TransitionInfo

COORDINATES = ("centred", "noncentred", "auto")
# coordinates="auto": candidate sites whose pilot statistic falls in this band around
# the cut at 1/2 are decided together (noncentred_by_statistic). Set from measurements:
# the demo's group slopes reached 0.73 over 12 keys (its intercepts 0.43-0.55); the
# diabetes BNN's data-dominated output bias (0.18-0.37) joins its hidden weights on
# one key of six (docs/design.md §3.2)
COORDINATES_JOINT_BAND = (0.3, 0.75)
# A site holding fewer values than this (elements × pilot chains) is decided with them
# wherever its statistic lies: a one-element site's read 0.15-1.19 over 20 keys on the
# BNN sine (median 0.52). Where the sites decided together hold fewer values than this,
# they follow the median over every candidate's elements (docs/design.md §3.2)
COORDINATES_JOINT_MIN_VALUES = 8


def noncentred_by_statistic(variances: dict) -> tuple:
    """The sites to non-centre, from each candidate's pilot variances of its
    standardised elements (:meth:`S3HMC._choose_coordinates`).

    A site is non-centred where the median of its variances exceeds ½. Sites whose
    medians lie in ``COORDINATES_JOINT_BAND`` are decided together, on the median over
    all their elements: related groups in mixed coordinates were the worst choice of
    all (the demo's intercepts centred and slopes non-centred: 4.2-5.7 ESS per 1,000
    gradients on ``s3hmc-demo --seed 2`` to ``6``, against 32-53 with both non-centred;
    docs/design.md §3.2). A site of fewer than ``COORDINATES_JOINT_MIN_VALUES`` values
    (elements × pilot chains) joins them wherever its median lies, and where the sites
    decided together hold fewer values than that, too few to place their median on
    either side of ½, they follow the median over every candidate's elements: a BNN's
    one-element output bias takes the coordinates of the layers beside it.
    """
    variances = {k: np.ravel(v) for k, v in variances.items()}
    median = {k: np.median(v) for k, v in variances.items()}
    low, high = COORDINATES_JOINT_BAND
    tiny = COORDINATES_JOINT_MIN_VALUES
    near = [k for k in variances if low <= median[k] <= high or variances[k].size < tiny]
    pool = near if sum(variances[k].size for k in near) >= tiny else variances
    joint = bool(near) and np.median(np.concatenate([variances[k] for k in pool])) > 0.5
    return tuple(k for k in variances if (joint if k in near else median[k] > high))


def s3hmc_step(
    rng_key: PRNGKey,
    state: IntegratorState,
    step_fn: Callable,
    metric: SemiSeparableMetric,
    step_size: Array,
    num_steps: Array,
    max_delta_energy: float = 1000.0,
    *,
    grads_per_step: int = 1,
    trajectory: str = "static",
    max_tree_depth: int = 10,
    multinomial: bool | Array = False,
    use_tree: Array | None = None,
    retry_steps: Array | None = None,
) -> tuple[IntegratorState, TransitionInfo]:
    """One S3HMC transition from ``state`` (its momenta are ignored).

    Draws r_θ ~ N(0, G_θ(η)) and r_η ~ N(0, G_η), and runs the trajectory scheme
    of :mod:`numpyro_s3hmc.trajectory` on ``step_fn`` (``grads_per_step`` gradients
    of U a step): ``"static"``, ``num_steps`` steps (stopping early if a step fails)
    and a Metropolis-Hastings test of the end point; or ``"nuts"``, a multinomial
    no-U-turn tree of at most 2^max_tree_depth steps with the Riemannian
    criterion; ``"multinomial"`` is warmup's opening window (a state of the static
    trajectory drawn in proportion to exp(−H), not reversible), which ``multinomial``
    (a boolean, possibly traced) also selects for ``"static"``. ``"auto"`` runs the
    tree where the boolean ``use_tree`` is true and the static scheme elsewhere, in
    one loop (:func:`~numpyro_s3hmc.trajectory.static_or_tree`): the momenta, the
    integrator's step and the energy are each compiled once. A failed step
    (non-finite energy, a fixed point that does not converge, τ ≤ 0) or an energy
    error above ``max_delta_energy`` is a divergence. With ``retry_steps`` (possibly
    traced; 0 turns it off), a static trajectory rejected with an acceptance below
    ``trajectory.RETRY_BELOW`` (a divergent one) is tried again with half the step
    size and ``retry_steps`` steps, by delayed rejection
    (:func:`~numpyro_s3hmc.trajectory.retried`).
    """
    key_momentum, key_trajectory = random.split(rng_key)
    r_theta, r_eta = sample_momentum(metric, key_momentum, state.eta, state.theta.size)
    state = state._replace(r_theta=r_theta, r_eta=r_eta)

    def energy(s):
        h, v_theta, v_eta = hamiltonian_and_velocity(
            metric, s.potential_energy, s.eta, s.r_theta, s.r_eta
        )
        return h, jnp.concatenate([v_theta, v_eta])

    def attempt(start, size, steps, stage, use_tree, multinomial, take=False):
        # the first stage draws with key_trajectory, as a transition without retries does
        key = key_trajectory
        if stage is not None:
            key = jnp.where(stage == 0, key, random.fold_in(key_trajectory, stage))
        return trajectories.static_or_tree(
            key,
            start,
            step_fn,
            grads_per_step,
            energy,
            size,
            steps,
            lambda s: jnp.concatenate([s.r_theta, s.r_eta]),
            use_tree,
            multinomial=multinomial,
            max_tree_depth=max_tree_depth,
            max_delta_energy=max_delta_energy,
            take=take,
        )

    def run(use_tree, multinomial=False):
        if retry_steps is None or use_tree is True or multinomial is True:
            return attempt(state, step_size, num_steps, None, use_tree, multinomial)
        return trajectories.retried(
            attempt,
            state,
            step_size,
            num_steps,
            retry_steps,
            use_tree,
            multinomial,
            rng_key=random.fold_in(key_trajectory, 3),  # stages 0-2 draw from the others
        )

    if trajectory in ("static", "multinomial"):  # the latter: warmup's opening window
        return run(False, True if trajectory == "multinomial" else multinomial)
    if trajectory == "nuts":
        return run(True)
    if trajectory == "auto":
        return run(use_tree, multinomial)
    raise ValueError(f"trajectory must be one of {TRAJECTORIES}, got {trajectory!r}.")


def _traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def find_reasonable_step_size(
    rng_key: PRNGKey,
    state: IntegratorState,
    step_fn: Callable,
    metric: SemiSeparableMetric,
    step_size: Array,
    target_accept_prob: float = 0.8,
    max_iter: int = 30,
) -> Array:
    """Double or halve ``step_size`` until one step's acceptance crosses the target.

    The heuristic of Hoffman & Gelman (2014, Algorithm 4), as NumPyro's HMC uses
    it, with S3HMC's own integrator and metric: a start far off the right scale
    costs a few gradients here instead of a collapsed warmup.
    """

    def body(carry):
        size, _, direction, key, i = carry
        key, sub = random.split(key)
        size = size * jnp.exp2(direction).astype(size.dtype)
        _, info = s3hmc_step(sub, state, step_fn, metric, size, jnp.int32(1))
        new_direction = jnp.where(info.accept_prob > target_accept_prob, 1, -1).astype(jnp.int32)
        return size, direction, new_direction, key, i + 1

    init = (step_size, jnp.int32(0), jnp.int32(0), rng_key, jnp.int32(0))
    return jax.lax.while_loop(partial(_keep_searching, max_iter=max_iter), body, init)[0]


def _keep_searching(search, max_iter: int = 30):
    """Whether :func:`find_reasonable_step_size` tries another size: the last trial
    turned the same way as the one before, within the float range and ``max_iter``."""
    size, last, direction, _, i = search
    finfo = jnp.finfo(jnp.result_type(size))
    in_range = ((size > finfo.tiny) | (direction >= 0)) & ((size < finfo.max) | (direction <= 0))
    return in_range & (i < max_iter) & ((last == 0) | (direction == last))


def _scheme_kwargs(tree, multinomial) -> dict:
    """:func:`s3hmc_step`'s scheme arguments for ``tree`` (True: the no-U-turn tree,
    False: the static length, traced: either) and ``multinomial``."""
    if isinstance(tree, bool):
        return (
            {"trajectory": "nuts"} if tree else {"trajectory": "static", "multinomial": multinomial}
        )
    return {"trajectory": "auto", "use_tree": tree, "multinomial": multinomial}


class S3HMCState(NamedTuple):
    """The kernel's state; NumPyro's field names wherever NumPyro has one."""

    i: Array  # shape=(), dtype=int32, iteration (warmup included)
    z: dict  # unconstrained latent values, by site
    potential_energy: Array  # shape=(), U(z) = -log p(y, z) - log|J|
    z_grad: dict  # ∂U/∂z, by site
    energy: Array  # shape=(), H at the returned state
    num_integrator_steps: Array  # shape=(), dtype=int32 (not "num_steps": see README)
    num_grad_evals: Array  # shape=(), dtype=int32, gradients of U this transition
    accept_prob: Array  # shape=()
    mean_accept_prob: Array  # shape=(), over warmup or over sampling
    diverging: Array  # shape=(), dtype=bool
    fixed_point_iters: Array  # shape=(), dtype=int32 (implicit_alba only)
    adapt_state: HMCAdaptState  # step_size, θ variance (NumPyro's)
    metric_state: MetricAdaptState  # G_θ(η) = prior_scale * P(η) + data_precision
    rng_key: PRNGKey
    # where warmup restarts a trapped chain: (z, U, ∂U/∂z) at the coordinates pilot's
    # lowest end state; None without a pilot (docs/design.md §6)
    restart_point: tuple | None = None


class S3HMC(MCMCKernel):
    """Semi-separable HMC for hierarchical models: precision, variance or scale hyperpriors.

    The kernel traces ``model`` to split its latent sites into parameters θ and
    hyperparameters η = log h (every positive site that scales a ``Normal`` or
    ``StudentT`` child, whatever its prior, see
    :func:`~numpyro_s3hmc.partition_sites` and docs/design.md §1), and samples both
    jointly with a Riemannian metric: the Fisher information of the model's ``Normal``
    factors at the current h, which couples each parameter with the parameters in its
    prior mean (μ in θ_j ~ N(μ, τ), docs/design.md §3.1) and takes the data term of
    Normal observations with linear means exactly, plus a constant adapted in warmup
    to the rest of the posterior's curvature; and for each η_l the
    constant c_l, its children's Fisher information in η_l (the paper's
    c_l = Q_l/2 + α_l − 1 for a Gamma precision; docs/design.md §3). Exact: every
    transition ends in a Metropolis-Hastings test on the full Hamiltonian.

    Parameters
    ----------
    model : a NumPyro model; its hyperparameters are plain ``numpyro.sample``.
        A ``potential_fn=`` (NUTS's alternative to a model) is refused: the blocks
        are found from the model's sample sites, which a potential does not have.
    integrator : ``"splitting"`` (one gradient a step, default), ``"alba"``
        (the paper's ALBA in log τ) or ``"implicit_alba"`` (ALBA in τ with the
        implicit generalised leapfrog, as the paper writes it).
    step_size : initial step size.
    adapt_step_size, adapt_metric : adapt the step size (dual averaging) and
        the constant term of the θ metric (Welford windows) during warmup.
    target_accept_prob : target of the step-size adaptation.
    trajectory_length : integration time; the number of steps is
        ``ceil(trajectory_length * u / step_size)`` with u ~ U(0.5, 1.5). ``None``
        (default): adapted in warmup to π times the largest posterior standard
        deviation in the metric's units (see :mod:`numpyro_s3hmc.adaptation`),
        starting from 2π.
    num_steps : a fixed number of steps instead (no jitter).
    max_num_steps : cap on the number of steps of one static trajectory (a tree's is
        2^max_tree_depth − 1).
    trajectory : ``"auto"`` (default): each chain chooses between the two schemes
        below in warmup. In the first half of NumPyro's last slow warmup window its
        transitions alternate between them, and at the half's end it keeps the one
        whose expected squared jump per gradient (per coordinate, in posterior
        variances) is larger on its slowest coordinates: the least over η and the 10%
        quantile over θ (:func:`~numpyro_s3hmc.adaptation.prefer_tree`). The choice
        is ``state.metric_state.use_tree`` (and in the progress bar); vectorized
        chains follow their majority. With fewer than 400 warmup iterations (a
        trial shorter than 100 transitions) it is the static length. Measured (docs/design.md §6.2): the
        static length on funnels, eight schools, BNN diabetes and the demo, the tree
        on the BNN sine, whose weights the static length left unconverged. The tree
        shares the static length's loop and integrator step, and its bookkeeping still
        compiles: the demo's transition compiles in 2.2 s against 1.5 s with the static
        length alone (benchmarks/results.md), so pass ``"static"`` where the
        hyperparameters are known to be the slow variables and compilation matters.
        ``"static"``: the jittered length above, one
        Metropolis-Hastings test of its end point; where the hyperparameters are
        the slow variables its end points are near-antithetic in them. A trajectory
        rejected with an acceptance below 0.01 (one that diverges) is tried once more
        at half the step size, accepted by delayed rejection
        (:func:`~numpyro_s3hmc.trajectory.retried`): a chain in a region too stiff
        for its step size moves on instead of rejecting every trajectory there;
        ``diverging`` still reports the first trajectory's divergence.
        ``"nuts"``: a multinomial no-U-turn tree over the same integrator with the
        Riemannian criterion (:mod:`numpyro_s3hmc.trajectory`), of at most
        2^max_tree_depth steps; ``trajectory_length`` and ``num_steps`` are then
        unused. The static length is 3-6× the tree on funnels, eight schools and a
        latent GP (benchmarks/results.md). In the opening
        warmup window (NumPyro's initial buffer) the static length draws its state
        along the trajectory in proportion to exp(−H), unless ``num_steps`` is
        given: it moves a chain that starts far above the bulk, where the end point
        is rejected while the step size collapses (docs/design.md §6).
    max_tree_depth : the tree's cap when ``trajectory="nuts"`` or ``"auto"``.
    param_metric : ``"prior*fisher"`` (default: the prior precision scaled to the
        posterior's mean curvature), ``"prior+fisher"``, ``"prior+variance"`` (a
        constant added to it) or ``"prior"`` (the paper's): how G_θ is adapted,
        see :mod:`numpyro_s3hmc.adaptation`.
    coupled_metric : build G_θ(η) from the exact Fisher information of every
        ``Normal`` factor whose mean is linear in θ (default, docs/design.md §3.1):
        each parameter is coupled with its location parents (μ in
        θ_j ~ N(μ, τ)), and Normal observations with such means give the data
        term exactly (adapted only beyond it). ``False``: the diagonal prior
        precision plus an adapted constant, as before.
    ungoverned_mass : the constant metric of a parameter no ``Normal`` or
        ``StudentT`` prior factor describes (a GP's latent values, a Laplace
        coefficient, a positive site that scales nothing): ``"fisher"`` (default),
        nutpie's sqrt(Var ∇U / Var x), the geometric mean of the other two;
        ``"gradient"``, the mean squared gradient (the posterior's mean curvature);
        ``"variance"``, the inverse Welford variance. Measured (benchmarks/results.md):
        ``"fisher"`` is never the worst and within 7% of the best where it is not
        the best; ``"variance"`` is best on a Bayesian lasso and 25–30% behind on
        non-centred eight schools, ``"gradient"`` the worst on both.
    coordinates : ``"auto"`` (default): each ``Normal`` site whose scale depends on
        the hyperparameters gets the coordinates that a short centred pilot run
        before warmup calls for (see :meth:`_choose_coordinates`): NumPyro's
        ``LocScaleReparam(0)`` coordinates θ = loc + scale · θ_decentered where the
        prior dominates the site, the model as written where the data do; a
        ``MultivariateNormal`` site (a Gaussian process) is a candidate too, whitened
        as θ = loc + L θ_decentered. The choice
        is in ``kernel.coordinates``, each candidate's pilot statistic in
        ``kernel.coordinates_pilot`` (sites between 0.3 and 0.75, and sites of fewer
        than 8 values, are decided together),
        the pilot's gradients in ``kernel.pilot_grad_evals``; under
        ``chain_method="parallel"`` the pilot runs once, at trace time, on four
        vectorized chains (docs/design.md §3.2). Its end state is also where warmup
        restarts a chain trapped far above the bulk with a collapsed step size
        (``state.metric_state.restarts`` counts them, docs/design.md §6). ``"centred"``: the model as written; ``"noncentred"``: every such site non-centred. Draws come
        back in the user's coordinates, under the user's names; the kernel's state
        keeps θ_decentered's value under θ's name too (so that ``print_summary`` shows
        θ), and ``kernel.model_z(state.z)`` gives it the sampled model's names. Inside
        ``Gibbs`` the kernel stays centred. Measured
        against centred (benchmarks/results.md): eight schools 99 against 30 ESS per
        1,000 gradients, the BNN sine's precisions 0.64 against 0.15, the 50-D
        prior-only funnels 111–388 against 12–100; where the data dominate the pilot
        picks centred and the two are the same sampler. A non-centred site's θ̃ and an
        ungoverned site take the inverse Welford variance as their metric where the
        median over all such elements of F·v (mean squared gradient times variance, 1
        for a Gaussian) exceeds 20, as a BNN's non-centred layers and their precisions
        do (docs/design.md §3).
    hyper_sites, count_observations : see :func:`~numpyro_s3hmc.partition_sites`.
    init_strategy : a NumPyro init strategy.
    integrator_kwargs : ``param_steps``, ``hyper_steps`` (inner leapfrog steps of
        each ALBA block), ``fixed_point_tol``, ``fixed_point_max_iter``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> def model():
    ...     tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([10]))
    >>> mcmc = MCMC(S3HMC(model), num_warmup=200, num_samples=200, progress_bar=False)
    >>> mcmc.run(jax.random.PRNGKey(0))
    >>> mcmc.get_samples()["x"].shape
    (200, 10)
    """

    def __init__(
        self,
        model: Callable | None = None,
        *,
        potential_fn: Callable | None = None,
        integrator: str = "splitting",
        step_size: float = 1.0,
        adapt_step_size: bool = True,
        adapt_metric: bool = True,
        target_accept_prob: float = 0.8,
        trajectory_length: float | None = None,
        num_steps: int | None = None,
        max_num_steps: int = 512,
        trajectory: str = "auto",
        max_tree_depth: int = 10,
        param_metric: str = "prior*fisher",
        coupled_metric: bool = True,
        ungoverned_mass: str = "fisher",
        coordinates: str = "auto",
        hyper_sites: tuple | None = None,
        count_observations: bool = True,
        init_strategy: Callable = init_to_uniform,
        integrator_kwargs: dict | None = None,
    ):
        if potential_fn is not None:
            raise ValueError(
                "S3HMC(potential_fn=...) is not supported: S3HMC finds its parameter and"
                " hyperparameter blocks from the model's sample sites, which a potential"
                " function does not have. Pass the NumPyro model, S3HMC(model), or"
                " sample the potential with NUTS(potential_fn=...)."
            )
        if model is None or not callable(model):
            raise ValueError(
                "S3HMC needs a NumPyro model (a callable), e.g. S3HMC(model): it finds its"
                " parameter and hyperparameter blocks from the model's sample sites."
            )
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}.")
        if trajectory not in (*TRAJECTORIES, "auto"):
            raise ValueError(
                f"trajectory must be one of {(*TRAJECTORIES, 'auto')}, got {trajectory!r}."
            )
        if max_tree_depth < 1:
            raise ValueError("max_tree_depth must be a positive integer.")
        if num_steps is not None and num_steps < 1:
            raise ValueError("num_steps must be a positive integer.")
        if trajectory_length is not None and trajectory_length <= 0:
            raise ValueError("trajectory_length must be positive.")
        self._model = model
        self._integrator = integrator
        self._step_size = float(step_size)
        self._adapt_step_size = adapt_step_size
        self._adapt_metric = adapt_metric
        self._target_accept_prob = target_accept_prob
        self._adapt_trajectory_length = trajectory_length is None and num_steps is None
        self._trajectory_length = 2 * np.pi if trajectory_length is None else trajectory_length
        self._num_steps = num_steps
        self._max_num_steps = int(max_num_steps)
        self._trajectory = trajectory
        self._max_tree_depth = int(max_tree_depth)
        self._param_metric = param_metric
        self._coupled_metric = bool(coupled_metric)
        self._ungoverned_mass = ungoverned_mass
        if coordinates not in COORDINATES:
            raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}.")
        self._coordinates = coordinates
        self._sampled_model = model
        self._noncentred_sites = None  # decided at the first init
        self._candidates = None
        # {the _decentered sample site of each non-centred site: the user's site}: the
        # state's z and z_grad hold its value under the user's name (what NumPyro's
        # print_summary and "~z.<site>" look for), the potential and the partition the
        # model's
        self._user_names = {}
        # gradients of U the coordinates="auto" pilot evaluated, over its chains; they
        # come before warmup and are in no state's num_grad_evals
        self.pilot_grad_evals = 0
        # the pilot's statistic per candidate site
        self.coordinates_pilot = None
        # the pilot's end state of lowest potential (the user's centred coordinates):
        # where warmup restarts a trapped chain
        self._pilot_z = None
        self._hyper_sites = hyper_sites
        self._count_observations = count_observations
        self._init_strategy = init_strategy
        self._integrator_kwargs = dict(integrator_kwargs or {})
        self._partition = None
        self._potential_fn_gen = None
        self._postprocess_fn = None
        self._sample_fn = None

    @property
    def model(self):
        return self._model

    @property
    def sample_field(self):
        return "z"

    @property
    def default_fields(self):
        # what ArviZ reads, collected without extra_fields=
        return (
            "z",
            "diverging",
            "potential_energy",
            "energy",
            "accept_prob",
            "num_grad_evals",
            "adapt_state.step_size",
        )

    @property
    def partition(self) -> SitePartition | None:
        """The blocks found at ``init`` (``None`` before)."""
        return self._partition

    def get_diagnostics_str(self, state):
        scheme = ""
        if self._trajectory == "auto":
            scheme = "tree, " if state.metric_state.use_tree else "static, "
        return (
            f"{scheme}{state.num_integrator_steps} steps of size "
            f"{state.adapt_state.step_size:.2e}. acc. prob={state.mean_accept_prob:.2f}"
        )

    def postprocess_fn(self, model_args, model_kwargs):
        if self._postprocess_fn is None:
            return identity
        fn = self._postprocess_fn(*model_args, **model_kwargs)
        if not self._user_names:
            return fn
        # draws come back in the user's coordinates: θ (a deterministic site of the
        # non-centred model), not the kernel's θ_decentered
        return lambda z: {k: v for k, v in fn(self.model_z(z)).items() if k not in self._user_names}

    def model_z(self, z: dict) -> dict:
        """The state's ``z`` (or ``z_grad``) under the sampled model's site names: a
        non-centred site's value, kept in the state under the user's name θ, is the
        model's ``θ_decentered`` (what ``kernel.partition`` and the potential take)."""
        if not self._user_names:
            return z
        model_names = {v: k for k, v in self._user_names.items()}
        return {model_names.get(k, k): v for k, v in z.items()}

    def _state_z(self, z: dict) -> dict:
        """The inverse of :meth:`model_z`."""
        return {self._user_names.get(k, k): v for k, v in z.items()}

    def refresh(self, state, model_args, model_kwargs):
        """U and ∂U/∂z at ``state.z`` for these arguments, the chain not moved.

        What NumPyro's ``Gibbs`` calls when the sites another block owns have
        changed, so that S3HMC can be one block of it (e.g. beside
        ``DiscreteGibbs`` for a model's discrete sites).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        potential_fn = self._potential_fn_gen(*model_args, **model_kwargs)
        pe, z_grad = jax.value_and_grad(potential_fn)(self.model_z(state.z))
        return state._replace(potential_energy=pe, z_grad=self._state_z(z_grad))

    def wrap_model(self, wrapper):
        """A copy bound to ``wrapper(model)``, rebuilt at its next ``init`` (for ``Gibbs``).

        ``Gibbs`` reads the block's sites from the state, so the copy samples the model's
        own coordinates: ``coordinates="auto"`` becomes ``"centred"``.
        """
        if self._coordinates == "noncentred":
            raise ValueError(
                "S3HMC(coordinates='noncentred') cannot be a Gibbs block: Gibbs reads the"
                " block's sites from the kernel's state, which would hold"
                " '<site>_decentered' instead. Use coordinates='centred' (or the default,"
                " 'auto', which stays centred inside Gibbs)."
            )
        kernel = copy.copy(self)
        kernel._coordinates = "centred"
        kernel._model = wrapper(self._model)
        kernel._sampled_model = kernel._model
        kernel._noncentred_sites = kernel._candidates = None
        kernel.pilot_grad_evals = 0
        kernel.coordinates_pilot = None
        kernel._pilot_z = None
        kernel._partition = None
        kernel._potential_fn_gen = None
        kernel._postprocess_fn = None
        kernel._sample_fn = None
        return kernel

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        vectorized = not is_prng_key(rng_key)
        if vectorized:
            rng_key, key_init = jnp.swapaxes(jax.vmap(random.split)(rng_key), 0, 1)
        else:
            rng_key, key_init = random.split(rng_key)
        self._sampled_model = self._model
        if self._coordinates != "centred" and self._noncentred_sites is None:
            # decided once per kernel (so every chain of a sequential run agrees)
            centred = partition_sites(self._model, model_args, model_kwargs)
            # a site the user named in hyper_sites stays a hyperparameter: the sites it
            # scales stay centred (non-centred, it would scale nothing)
            named = set(self._hyper_sites or ())
            self._candidates = tuple(
                k
                for k in noncentred_candidates(centred, self._model, model_args, model_kwargs)
                if not named & set(centred.param_sites[k].governed_by)
            )
            if self._coordinates == "auto":
                self._noncentred_sites, init_params = self._choose_coordinates(
                    key_init, num_warmup, init_params, model_args, model_kwargs
                )
            else:
                self._noncentred_sites = self._candidates
        sites = () if self._coordinates == "centred" else self._noncentred_sites
        self._user_names = {}
        # where warmup restarts a trapped chain: the pilot's end state, so none without
        # a pilot, and none without a step size to watch collapse
        restart_z = self._pilot_z if self._coordinates == "auto" else None
        self._restart_at = restart_windows(num_warmup) if self._adapt_step_size else ()
        if not self._restart_at:
            restart_z = None
        if sites:
            self._sampled_model = noncentred(self._model, sites)
            names = decentred_names(self._model, sites, model_args, model_kwargs)
            self._user_names = {v: k for k, v in names.items()}
            if init_params is not None:  # given in the user's (centred) coordinates
                init_params = self._to_noncentred(
                    init_params, names, vectorized, model_args, model_kwargs
                )
            if restart_z is not None:
                restart_z = self._to_noncentred(restart_z, names, False, model_args, model_kwargs)
        self._partition = partition_sites(
            self._sampled_model,
            model_args,
            model_kwargs,
            hyper_sites=self._hyper_sites,
            count_observations=self._count_observations,
        )
        new_params, self._potential_fn_gen, self._postprocess_fn, _ = initialize_model(
            key_init,
            self._sampled_model,
            init_strategy=self._init_strategy,
            dynamic_args=True,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        if init_params is None:
            init_params = new_params.z
        self._num_warmup = num_warmup
        governed = self._partition.governed_mask
        parents = np.zeros_like(governed)
        if self._coupling(None) is not None:
            parents[self._partition.coupling.parents] = True
        self._adapt_init, self._adapt_update = metric_adapter(
            num_warmup,
            governed,
            self._partition.hyper_precision,
            adapt_trajectory_length=self._adapt_trajectory_length,
            param_metric=self._param_metric,
            adapt_step_size=self._adapt_step_size,
            adapt_metric=self._adapt_metric,
            target_accept_prob=self._target_accept_prob,
            parents=parents,
            ungoverned_mass=self._ungoverned_mass,
            free=self._partition.site_mask(self._free_sites()),
            use_tree=self._trajectory == "nuts",
        )
        # trajectory="auto": the warmup window in which both schemes are tried
        self._trial = trial_window(num_warmup) if self._trajectory == "auto" else None
        # in the opening warmup window (NumPyro's initial buffer) trajectory="static"
        # draws its state along the trajectory in proportion to exp(-H) instead of
        # testing the end point: from a start in a stiff tail far above the bulk the
        # end point is rejected again and again while the step size collapses
        # (docs/design.md §6); warmup need not be reversible. A warmup too short for
        # more than one window (below 20 iterations) keeps its second half for the end
        # point's test: the sampling phase's step size must be adapted on it (else a
        # BNN's first draws all diverged after 15 warmup iterations)
        schedule = build_adaptation_schedule(num_warmup) if num_warmup > 0 else []
        opening = int(schedule[0][1]) + 1 if len(schedule) > 1 else num_warmup // 2
        self._tree_until = opening if schedule else 0
        init_fn = partial(
            self._init_chain,
            restart_z=restart_z,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        self._sample_fn = self._sample_chain
        if vectorized:
            self._sample_fn = self._sample_vectorized
            return jax.vmap(init_fn)(init_params, rng_key)
        return init_fn(init_params, rng_key)

    @property
    def coordinates(self) -> dict | None:
        """``{site: "centred" | "noncentred"}`` for the sites that could be either
        (``None`` before ``init``, or when ``coordinates="centred"``)."""
        if self._noncentred_sites is None or self._candidates is None:
            return None
        return {
            k: "noncentred" if k in self._noncentred_sites else "centred" for k in self._candidates
        }

    def _to_noncentred(self, z, names, vectorized, model_args, model_kwargs):
        """``z`` in the non-centred coordinates; ``names``: {site: its _decentered name}."""

        def convert(z):
            new = standardise(self._model, model_args, model_kwargs, z, tuple(names))
            out = {k: v for k, v in z.items() if k not in names}
            out.update({names[k]: v for k, v in new.items()})
            return out

        return jax.vmap(convert)(z) if vectorized else convert(z)

    def _choose_coordinates(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        """Centred or non-centred coordinates for each candidate site, from a pilot run.

        A short centred run (``num_warmup // 4`` iterations, 50 to 200 but at most
        ``max(num_warmup, 10)``, on top of the warmup) measures, for every element of a
        candidate site θ ~ N(loc, scale), the
        variance over its second half of the standardised value (θ − loc)/scale
        (L⁻¹(θ − loc) for θ ~ MultivariateNormal(loc, L Lᵀ)). Near 1,
        the prior dominates and the non-centred coordinates are better; near 0, the data
        pin θ down and the centred ones are (the variance is (1/D)/(scale² + 1/D) at a
        data precision D). A site is non-centred where the median over its elements and
        chains exceeds ½, i.e. where its data precision is below its prior precision
        (docs/design.md §3.2). Sites whose medians lie between 0.3 and 0.75 are decided
        together (:func:`noncentred_by_statistic`), so that related groups near the cut
        do not land on opposite sides of it, and a site of fewer than 8 values (a BNN's
        one-element output bias), whose statistic is noise, is decided with them
        wherever it lies (with every candidate where they hold fewer than 8 values
        together). The medians are in
        ``kernel.coordinates_pilot``. Returns the chosen sites and the pilot's last point.
        """
        candidates = self._candidates
        if not candidates:
            return (), init_params
        if _traced(rng_key):
            # inside pmap (chain_method="parallel"): run the pilot now, at trace time,
            # on four vectorized chains from a fixed key (every device gets the same
            # choice; one chain's few draws left the statistic near its cut); its
            # state cannot start the traced chains
            if _traced((init_params, model_args, model_kwargs)):
                warnings.warn(
                    "coordinates='auto' cannot run its pilot under chain_method='parallel'"
                    " with traced model arguments or init_params; sampling in centred"
                    " coordinates. Pass coordinates='noncentred' or 'centred' to choose.",
                    UserWarning,
                    stacklevel=4,
                )
                return (), init_params
            with jax.ensure_compile_time_eval():
                chosen, _ = self._choose_coordinates(
                    random.split(random.PRNGKey(0), 4), num_warmup, None, model_args, model_kwargs
                )
            return chosen, init_params
        pilot = copy.copy(self)
        pilot._coordinates, pilot._noncentred_sites = "centred", ()
        pilot._user_names = {}
        if pilot._trajectory == "auto":  # its statistic needs no tree, and compiles faster
            pilot._trajectory = "static"
        # a quarter of warmup, 50 to 200 iterations, but never longer than warmup itself
        # (at least 10): a short test run is not tripled by its pilot
        steps = min(int(np.clip(num_warmup // 4, 50, 200)), max(num_warmup, 10))
        state = pilot.init(rng_key, steps, init_params, model_args, model_kwargs)
        vectorized = not is_prng_key(rng_key)

        def standardised(z):
            values = standardise(self._model, model_args, model_kwargs, z, candidates)
            return {k: jnp.reshape(v, (-1,)) for k, v in values.items()}

        if vectorized:
            standardised = jax.vmap(standardised)

        @jax.jit
        def run(state):
            def body(s, _):
                s = pilot.sample(s, model_args, model_kwargs)
                return s, (standardised(s.z), s.num_grad_evals)

            return jax.lax.scan(body, state, None, length=steps)

        state, (draws, grads) = run(state)
        self._pilot_z = state.z
        if vectorized:
            best = jnp.argmin(
                jnp.where(jnp.isfinite(state.potential_energy), state.potential_energy, jnp.inf)
            )
            self._pilot_z = jax.tree.map(lambda v: v[best], state.z)
        self.pilot_grad_evals = int(np.sum(grads))
        var = {k: np.var(np.asarray(draws[k])[steps // 2 :], axis=0) for k in candidates}
        self.coordinates_pilot = {k: float(np.median(v)) for k, v in var.items()}
        chosen = noncentred_by_statistic(var)
        return chosen, state.z

    def _hamiltonian_parts(self, model_args, model_kwargs, metric_state, dtype):
        partition = self._partition
        potential_fn = self._potential_fn_gen(*model_args, **model_kwargs)
        model = self._sampled_model
        # W(η) and D(η) trace the whole model (its likelihood too, which XLA drops), and
        # a transition evaluates them at half a dozen places (each step, the energy, the
        # adaptation): under jit each is traced and lowered once, not at every place
        prior_precision = jax.jit(prior_precision_fn(model, partition, model_args, model_kwargs))
        c = jnp.asarray(partition.hyper_precision, dtype)

        def potential_and_grad(theta, eta):
            u, grad = jax.value_and_grad(potential_fn)(merge_z(theta, eta, partition))
            g_theta, g_eta = split_z(grad, partition)
            return u, g_theta, g_eta

        coupling = self._coupling(dtype)
        observed = data_precision_fn(model, partition, model_args, model_kwargs)
        if not self._coupled_metric or observed is None:
            observed = None
        else:
            observed = jax.jit(observed)
        scale, d = metric_state.prior_scale, metric_state.data_precision
        data = d if observed is None else (lambda eta: observed(eta) + d)
        metric = SemiSeparableMetric(lambda eta: prior_precision(eta) * scale, c, data, coupling)
        # what the adaptation compares the posterior's curvature with: the diagonal
        # of AᵀW(η)A plus the observations' exact term, unscaled
        unit = SemiSeparableMetric(prior_precision, c, observed, coupling)
        return potential_and_grad, metric, partial(param_diagonal, unit)

    def _coupling(self, dtype):
        coupling = self._partition.coupling
        if coupling is None or not self._coupled_metric:
            return None
        return coupling._replace(
            b_rows=jnp.asarray(coupling.b_rows, dtype),
            b_parents=jnp.asarray(coupling.b_parents, dtype),
        )

    def _free_sites(self):
        """The θ sites free of η whose metric is adapted: the non-centred ones
        (θ̃ ~ N(0, 1)) and the ungoverned ones, location parents aside."""
        sites = self._partition.param_sites
        return tuple(
            k
            for k, p in sites.items()
            if (k in self._user_names or not p.governed.any()) and not p.location_of
        )

    def _init_chain(self, z, rng_key, restart_z, model_args, model_kwargs):
        partition = self._partition
        potential_fn = self._potential_fn_gen(*model_args, **model_kwargs)
        pe, z_grad = jax.value_and_grad(potential_fn)(z)
        restart_point = None
        if restart_z is not None:
            pe_r, grad_r = jax.value_and_grad(potential_fn)(restart_z)
            restart_point = (self._state_z(restart_z), pe_r, self._state_z(grad_r))
        theta, eta = split_z(z, partition)
        dtype = jnp.result_type(theta, eta, pe)
        governed = jnp.asarray(partition.governed_mask)
        d0 = jnp.where(governed, 0.0, 1.0).astype(dtype)  # unit mass where ungoverned
        rng_key, key_adapt = random.split(rng_key)
        step_size = jnp.asarray(self._step_size, dtype)
        wa_state, metric_state = self._adapt_init(
            jnp.concatenate([theta, eta]), key_adapt, step_size, d0, self._trajectory_length
        )
        zero = jnp.zeros((), dtype)
        return S3HMCState(
            i=jnp.int32(0),
            z=self._state_z(z),
            potential_energy=pe,
            z_grad=self._state_z(z_grad),
            energy=pe,
            num_integrator_steps=jnp.int32(0),
            num_grad_evals=jnp.int32(0),
            accept_prob=zero,
            mean_accept_prob=zero,
            diverging=jnp.bool_(False),
            fixed_point_iters=jnp.int32(0),
            adapt_state=wa_state._replace(rng_key=None),
            metric_state=metric_state,
            rng_key=rng_key,
            restart_point=restart_point,
        )

    def _restart_if_trapped(self, state):
        """``state``, or where the chain is :func:`~numpyro_s3hmc.adaptation.trapped`, a
        fresh start at its restart point: the step size, metric and trajectory length of
        ``init``, in the current warmup window (docs/design.md §6); and whether it was."""
        partition = self._partition
        z_r, pe_r, grad_r = state.restart_point
        theta, eta = split_z(self.model_z(z_r), partition)
        dim = theta.size + eta.size
        stuck = trapped(
            state.potential_energy, state.adapt_state.step_size, state.metric_state, pe_r, dim
        )
        dtype = jnp.result_type(theta, eta, pe_r)
        d0 = jnp.where(jnp.asarray(partition.governed_mask), 0.0, 1.0).astype(dtype)
        wa_state, metric_state = self._adapt_init(
            jnp.concatenate([theta, eta]),
            random.PRNGKey(0),  # only NumPyro's step-size search reads it, unused here
            jnp.asarray(self._step_size, dtype),
            d0,
            self._trajectory_length,
        )
        fresh = state._replace(
            z=z_r,
            potential_energy=pe_r,
            z_grad=grad_r,
            adapt_state=wa_state._replace(rng_key=None, window_idx=state.adapt_state.window_idx),
            metric_state=metric_state._replace(restarts=state.metric_state.restarts + 1),
        )
        return jax.tree.map(lambda a, b: jnp.where(stuck, a, b), fresh, state), stuck

    def _trajectory_steps(self, rng_key, step_size, trajectory_length):
        if self._num_steps is not None:
            return jnp.int32(self._num_steps)
        u = random.uniform(rng_key, minval=0.5, maxval=1.5, dtype=jnp.result_type(step_size))
        n = jnp.ceil(trajectory_length * u / step_size)
        return jnp.clip(n, 1, self._max_num_steps).astype(jnp.int32)

    def _retry_steps(self, num_steps):
        """The steps of a rejected static trajectory's retry at 1/RETRY_FACTOR of the
        step size: the same length, within ``max_num_steps``."""
        factor = trajectories.RETRY_FACTOR
        return jnp.minimum(num_steps * factor, max(self._max_num_steps, 1)).astype(jnp.int32)

    def _search_then_transition(
        self,
        first,
        key_search,
        key_steps,
        key,
        step_size,
        length,
        start,
        transition,
        tree,
        multinomial,
    ):
        """:func:`find_reasonable_step_size` where ``first`` is true, then the transition,
        in one loop around one call of ``transition``: each trial of the search is the
        static scheme with one step, as the search's own call is. Returns the step size
        (the search's where ``first``) and the transition's state and info."""

        def body(carry):
            search, _, _, _ = carry
            trying = first & _keep_searching(search)
            size, last, direction, key_s, j = search
            key_s, sub = random.split(key_s)
            size = jnp.where(trying, size * jnp.exp2(direction).astype(size.dtype), size)
            steps = jnp.where(trying, 1, self._trajectory_steps(key_steps, size, length))
            # a rejected trajectory may be retried at half the step (not a search's trial)
            retry = jnp.where(trying, 0, self._retry_steps(steps))
            # a Python False stays one: a static-only model compiles no tree
            tree_now = tree if tree is False else tree & ~trying
            mult = multinomial if isinstance(multinomial, bool) else multinomial & ~trying
            new, info = transition(
                jnp.where(trying, sub, key),
                step_size=size,
                num_steps=steps,
                retry_steps=retry,
                **_scheme_kwargs(tree_now, mult),
            )
            turn = jnp.where(info.accept_prob > 0.8, 1, -1).astype(jnp.int32)
            search = (
                size,
                jnp.where(trying, direction, last),
                jnp.where(trying, turn, direction),
                key_s,
                j + trying.astype(jnp.int32),
            )
            return search, ~trying, new, info

        i32 = jnp.int32(0)
        search = (step_size, i32, i32, key_search, i32)
        # the loop's first pass fills these; their values are never read
        blank = (start, TransitionInfo.blank(start.potential_energy.dtype))
        search, _, new, info = jax.lax.while_loop(
            lambda c: ~c[1], body, (search, jnp.bool_(False), *blank)
        )
        return search[0], new, info

    def _sample_chain(self, state, model_args, model_kwargs, use_tree=None, fold_search=True):
        """One transition; ``use_tree`` (``trajectory="auto"``) overrides the
        state's choice of scheme (the vote of vectorized chains); ``fold_search=False``
        (vectorized chains) searches the first step size in a loop of its own."""
        partition = self._partition
        # at the start of an early warmup window a trapped chain restarts (a real
        # branch: i is unbatched under vmap too); its step size is searched again
        restart_now = False
        restarted = jnp.bool_(False)
        if self._restart_at and state.restart_point is not None:
            restart_now = jnp.isin(state.i, jnp.asarray(self._restart_at))
            state, restarted = jax.lax.cond(
                restart_now, self._restart_if_trapped, lambda s: (s, restarted), state
            )
        theta, eta = split_z(self.model_z(state.z), partition)
        g_theta, g_eta = split_z(self.model_z(state.z_grad), partition)
        potential_and_grad, metric, unit_diagonal = self._hamiltonian_parts(
            model_args, model_kwargs, state.metric_state, theta.dtype
        )
        step_fn, grads_per_step = build_integrator(
            self._integrator, potential_and_grad, metric, **self._integrator_kwargs
        )
        rng_key, key_steps, key_transition, key_search = random.split(state.rng_key, 4)
        start = IntegratorState(theta, eta, theta, eta, state.potential_energy, g_theta, g_eta)
        adapt_state = state.adapt_state
        metric_state = state.metric_state
        use_tree = metric_state.use_tree if use_tree is None else use_tree
        opening = self._trajectory != "nuts" and self._tree_until > 0 and self._num_steps is None
        trial = self._trial
        # the scheme of this transition: trajectory="auto" tries both in its trial window
        # (alternating), then keeps the one chosen; the opening window of "static" and
        # "auto" draws the static trajectory's state multinomially, never from the tree
        multinomial = False
        if trial is not None:
            in_trial = (state.i >= trial[0]) & (state.i <= trial[1])
            tree = jnp.where(in_trial, state.i % 2 == 1, use_tree)
            if opening:
                multinomial = state.i < self._tree_until
                tree = tree & ~multinomial
        elif self._trajectory == "nuts":
            tree = True
        else:  # "auto" without a trial (a short warmup) is the static length
            tree = False
            if opening:
                multinomial = state.i < self._tree_until
        transition = partial(
            s3hmc_step,
            state=start,
            step_fn=step_fn,
            metric=metric,
            grads_per_step=grads_per_step,
            max_tree_depth=self._max_tree_depth,
        )
        length = state.metric_state.trajectory_length
        search = self._adapt_step_size and self._num_warmup > 0
        # the step size is searched at the first warmup iteration and after a restart
        first = (state.i == 0) | restarted
        if search and fold_search:
            # find the scale before dual averaging, each trial one static step through
            # the same compiled transition as the draw (a separate search would compile
            # the momenta and the integrator again)
            step_size, new, info = self._search_then_transition(
                first,
                key_search,
                key_steps,
                key_transition,
                adapt_state.step_size,
                length,
                start,
                transition,
                tree,
                multinomial,
            )
            adapt_state = jax.lax.cond(
                first, lambda a: restart_step_size(a, step_size), identity, adapt_state
            )
        else:
            if search:  # vectorized chains: a batched search would batch the schemes' flags

                def searched(a):
                    size = find_reasonable_step_size(
                        key_search, start, step_fn, metric, a.step_size
                    )
                    new = restart_step_size(a, size)
                    return jax.tree.map(lambda x, y: jnp.where(first, x, y), new, a)

                adapt_state = jax.lax.cond(
                    (state.i == 0) | restart_now, searched, identity, adapt_state
                )
            step_size = adapt_state.step_size
            steps = self._trajectory_steps(key_steps, step_size, length)
            new, info = transition(
                key_transition,
                step_size=step_size,
                num_steps=steps,
                retry_steps=self._retry_steps(steps),
                **_scheme_kwargs(tree, multinomial),
            )
        if search:  # what a later collapse of the step size is measured against
            metric_state = metric_state._replace(
                found_step_size=jnp.where(first, step_size, metric_state.found_step_size)
            )
        if trial is not None:
            # the bookkeeping only inside the trial (a quantile sorts θ): real branches,
            # also under vmap, where i is unbatched
            metric_state = jax.lax.cond(
                in_trial,
                lambda m: record_jump(
                    m,
                    tree,
                    jnp.concatenate([theta, eta]),
                    jnp.concatenate([new.theta, new.eta]),
                    adapt_state.inverse_mass_matrix,
                    info.num_grad_evals,
                ),
                identity,
                metric_state,
            )
            metric_state = jax.lax.cond(
                state.i == trial[1],
                lambda m: m._replace(use_tree=prefer_tree(m, theta.size)),
                identity,
                metric_state,
            )

        def adapt(args):
            wa_state, metric_state = args
            return self._adapt_update(
                state.i,
                info.accept_prob,
                jnp.concatenate([new.theta, new.eta]),
                new.grad_theta,
                unit_diagonal(new.eta),
                wa_state,
                metric_state,
            )

        adapt_state, metric_state = jax.lax.cond(
            state.i < self._num_warmup,
            adapt,
            identity,
            (adapt_state, metric_state),
        )
        itr = state.i + 1
        n = jnp.where(state.i < self._num_warmup, itr, itr - self._num_warmup)
        mean_accept_prob = state.mean_accept_prob + (info.accept_prob - state.mean_accept_prob) / n
        return S3HMCState(
            i=itr,
            z=self._state_z(merge_z(new.theta, new.eta, partition)),
            potential_energy=new.potential_energy,
            z_grad=self._state_z(merge_z(new.grad_theta, new.grad_eta, partition)),
            energy=info.energy,
            num_integrator_steps=info.num_steps,
            num_grad_evals=info.num_grad_evals,
            accept_prob=info.accept_prob,
            mean_accept_prob=mean_accept_prob,
            diverging=info.diverging,
            fixed_point_iters=info.fixed_point_iters,
            adapt_state=adapt_state,
            metric_state=metric_state,
            rng_key=rng_key,
            restart_point=state.restart_point,
        )

    def _sample_vectorized(self, state, model_args, model_kwargs):
        """The chains of a vectorized run, in lockstep: their iteration counter is one
        unbatched number, so the warmup/sampling branches stay real branches under
        ``vmap`` instead of both being computed."""
        i = state.i[0]
        # trajectory="auto": the chains' majority choice, unbatched as i is, so that the
        # schemes stay real branches too
        use_tree = jnp.mean(state.metric_state.use_tree) > 0.5

        def one(s):
            return self._sample_chain(
                s._replace(i=i), model_args, model_kwargs, use_tree, fold_search=False
            )

        return jax.vmap(one)(state)

    def sample(self, state, model_args, model_kwargs):
        assert self._sample_fn is not None, "`init` must be called before `sample`."
        return self._sample_fn(state, model_args, model_kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        state["_adapt_init"] = None
        state["_adapt_update"] = None
        return state
