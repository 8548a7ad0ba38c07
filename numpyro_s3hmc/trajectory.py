"""Trajectories over a reversible integrator: a static length, or a no-U-turn tree.

Both schemes take an integrator ``step(state, step_size) -> (state, StepInfo)``
(:mod:`numpyro_s3hmc.integrators`), how many gradients of U one step costs, and
``energy(state) -> (H, p♯)``: the Hamiltonian and the velocity p♯ = ∂H/∂p (for the
semi-separable metric p♯ = (G_θ(η)⁻¹ r_θ, G_η⁻¹ r_η), which depends on the
position). The momenta of ``state`` are the ones drawn for this transition. Both
count the integrator steps and gradients they actually evaluate and report a
divergence: a step that fails (non-finite, no fixed point) or an energy error
above ``max_delta_energy``.

- :func:`static`: ``num_steps`` steps, stopping at a failed one, then a
  Metropolis-Hastings test of the end point (docs/design.md §6 for the length).
- :func:`no_u_turn`: the multinomial no-U-turn sampler of Betancourt (2017,
  Appendix A), built iteratively in one ``while_loop`` per subtree with O(depth)
  checkpoints as NumPyro's ``build_tree`` does, but with a position-dependent
  kinetic energy: each leaf's energy and velocity come from ``energy``, and a
  (sub)tree turns when ρ·p♯ ≤ 0 at either end, ρ the sum of its momenta (the
  Riemannian criterion, Betancourt 2013; Stan's ``base_nuts.hpp`` without its
  extra checks across merged halves, which NumPyro does not make either).
  NumPyro's and BlackJAX's trees take a constant mass matrix only.
- :func:`static_or_tree`: either, chosen by a boolean that may be traced (warmup's
  trial of both schemes). Both schemes are one pair of loops, the tree's doublings
  around the steps of each (the static trajectory: one pass), so that the
  integrator's step and the energy are compiled once, not once per scheme.

References
----------
Betancourt, M. (2013). Generalizing the no-U-turn sampler to Riemannian
manifolds. arXiv:1304.1920.
Betancourt, M. (2017). A conceptual introduction to Hamiltonian Monte Carlo.
arXiv:1701.02434.
Hoffman, M. D. and Gelman, A. (2014). The no-U-turn sampler. JMLR.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random

from numpyro_s3hmc._types import Array, PRNGKey

TRAJECTORIES = ("static", "nuts")


class TransitionInfo(NamedTuple):
    accept_prob: Array  # shape=(), the MH probability; a tree's mean over its leaves
    diverging: Array  # shape=(), dtype=bool
    energy: Array  # shape=(), H of the returned state
    num_steps: Array  # shape=(), dtype=int32, integrator steps taken
    num_grad_evals: Array  # shape=(), dtype=int32, gradients of U
    fixed_point_iters: Array  # shape=(), dtype=int32, most iterations of a solve
    # the static end point passed its test (the tree and the multinomial draw: False;
    # they are never retried, see kernel.s3hmc_step)
    accepted: Array  # shape=(), dtype=bool

    @classmethod
    def blank(cls, dtype):
        """Zeros and falses: a loop's first carry, filled by its first pass."""
        zero, i32, no = jnp.zeros((), dtype), jnp.int32(0), jnp.bool_(False)
        return cls(zero, no, zero, i32, i32, i32, no)


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _kept_apart(i: Array) -> Array:
    """``i`` unchanged, through a sort of two elements: a loop that holds it is not
    compiled into one LLVM function.

    XLA's CPU backend (in jaxlib 0.12.1; not in 0.10.0 or 0.10.2) compiles a while loop that
    touches few bytes and holds no sort, custom call or other op that needs the
    runtime into a single LLVM function (its small-while-loop hoisting). Where the
    loop holds a no-U-turn tree, LLVM's time on that one function grows faster than
    the tree's code: on the demo's model the transition of ``trajectory="auto"``
    compiled in 4.6-6.1 s (fresh processes, a busy 2-core machine) with the whole
    trajectory one function, and in 3.8-5.2 s with :func:`retried`'s loop kept apart
    and each pass of the trajectory still one function. A loop kept apart runs its
    kernels one at a time, which costs a small model time: the BNN sine's tree cost
    10 µs a gradient against 3.1 with the step's loop kept apart, 4.3-4.6 µs with
    each doubling's, and 5% more with :func:`retried`'s alone, the one kept apart
    (docs/design.md §6.2).
    """
    return jnp.sort(jnp.stack([i, i]))[0]


def static(
    rng_key: PRNGKey,
    state,
    step_fn: Callable,
    grads_per_step: int,
    energy_fn: Callable,
    step_size: Array,
    num_steps: Array,
    max_delta_energy: float = 1000.0,
    multinomial: bool = False,
):
    """``num_steps`` steps from ``state``, then accept the end point with
    probability min(1, exp(H₀ − H₁)); a failed trajectory is rejected.

    ``multinomial=True``, for the opening warmup window only (it is not reversible,
    since the start is always the trajectory's first state): return a state of the
    trajectory drawn in proportion to exp(H₀ − H), the start included, stopping at a
    failed step. From far above the bulk it moves to the trajectory's best states
    where the end point alone would be rejected. ``accept_prob`` is then the mean of
    min(1, exp(H₀ − H)) over the steps, as a tree's is. ``multinomial`` may be a
    traced boolean: the two then share one loop, and so one compiled copy of
    ``step_fn``, with the draw's bookkeeping under ``lax.cond``.
    """
    return static_or_tree(
        rng_key,
        state,
        step_fn,
        grads_per_step,
        energy_fn,
        step_size,
        num_steps,
        None,
        False,
        multinomial=multinomial,
        max_delta_energy=max_delta_energy,
    )


class _Tree(NamedTuple):
    left: object  # the leftmost and rightmost states (integration-time order)
    right: object
    v_left: Array  # p♯ at the two ends
    v_right: Array
    proposal: object
    proposal_energy: Array
    log_weight: Array  # log Σ exp(H₀ − H) over the leaves
    rho: Array  # Σ p over the leaves
    depth: Array
    num_steps: Array
    sum_accept: Array
    turning: Array
    diverging: Array
    iters: Array


class _Run(NamedTuple):
    """The inner loop's carry: the steps of one subtree, or the static trajectory."""

    i: Array  # steps taken
    state: object  # the last one's state
    velocity: Array  # p♯ there (the tree)
    energy: Array  # H there (the tree and the multinomial draw)
    proposal: object
    proposal_energy: Array
    log_weight: Array  # log Σ exp(H₀ − H) over the states drawn from
    rho: Array  # Σ p over the steps (the tree)
    sum_accept: Array
    checkpoints: tuple  # the tree's (p, p♯, ρ) at the first leaf of each open subtree
    key: PRNGKey
    turning: Array
    failed: Array  # the tree: a divergence; the static scheme: a step that failed
    iters: Array


def _turning(v_left, v_right, rho):
    return (jnp.dot(v_left, rho) <= 0) | (jnp.dot(v_right, rho) <= 0)


def _checkpoint_range(n):
    """The checkpoints leaf ``n`` of a subtree is checked against (NumPyro's
    ``_leaf_idx_to_ckpt_idxs``): the subtrees that end at an odd leaf n are those of
    sizes 2, 4, … 2^k, k its trailing one bits; their first leaves' checkpoints are
    numbered by the one bits of n above the last."""
    idx_max = jax.lax.population_count(n >> 1)
    trailing_ones = jax.lax.population_count((n ^ (n + 1)) >> 1)
    return idx_max - trailing_ones + 1, idx_max


def no_u_turn(
    rng_key: PRNGKey,
    state,
    step_fn: Callable,
    grads_per_step: int,
    energy_fn: Callable,
    step_size: Array,
    momentum_fn: Callable,
    max_tree_depth: int = 10,
    max_delta_energy: float = 1000.0,
):
    """A multinomial no-U-turn transition from ``state`` (its momenta drawn).

    ``momentum_fn(state)`` is the flat momentum p (what ρ sums), ``energy_fn(state)``
    gives H and the flat p♯ in the same order. The tree doubles in a random
    direction until it turns, a leaf diverges, or it has 2^max_tree_depth leaves;
    the new subtree replaces the proposal with probability min(1, w_new / w_old)
    unless it turned or diverged, and each subtree samples its own proposal in
    proportion to exp(−H) (Betancourt 2017, A.3).
    """
    return static_or_tree(
        rng_key,
        state,
        step_fn,
        grads_per_step,
        energy_fn,
        step_size,
        None,
        momentum_fn,
        True,
        max_tree_depth=max_tree_depth,
        max_delta_energy=max_delta_energy,
    )


def static_or_tree(
    rng_key: PRNGKey,
    state,
    step_fn: Callable,
    grads_per_step: int,
    energy_fn: Callable,
    step_size: Array,
    num_steps: Array | None,
    momentum_fn: Callable | None,
    use_tree: bool | Array,
    *,
    multinomial: bool | Array = False,
    max_tree_depth: int = 10,
    max_delta_energy: float = 1000.0,
    take: bool | Array = False,
):
    """:func:`no_u_turn` where ``use_tree`` is true, :func:`static` where it is false.

    Both are one pair of loops: an outer one over the tree's doublings (the static
    scheme: one pass) around an inner one that takes a step a pass. ``use_tree`` and
    ``multinomial`` may be traced booleans; each scheme's bookkeeping is then under
    ``lax.cond``, and ``step_fn`` and ``energy_fn`` are compiled once for both,
    instead of once in each scheme's own loop. Where ``take`` is true, the static
    end point is returned without its test unless its trajectory failed (the second
    stage of :func:`retried`, which makes its own).
    """
    h0, v0 = energy_fn(state)
    dtype = h0.dtype
    zero_i = jnp.int32(0)
    fixed = isinstance(use_tree, bool)
    tree_only, static_only = fixed and use_tree, fixed and not use_tree
    if static_only:  # no tree: nothing of its bookkeeping in the program
        p0 = ckpt = None
    else:
        p0 = momentum_fn(state)
        ckpt = jnp.zeros((max(max_tree_depth, 1), p0.size), dtype)
    tree = _Tree(
        left=state,
        right=state,
        v_left=v0,
        v_right=v0,
        proposal=state,
        proposal_energy=h0,
        log_weight=jnp.zeros((), dtype),
        rho=p0,
        depth=zero_i,
        num_steps=zero_i,
        sum_accept=jnp.zeros((), dtype),
        turning=jnp.bool_(False),
        diverging=jnp.bool_(False),
        iters=zero_i,
    )

    def cond_or(pred, true_fn, false_fn, *args):
        """``lax.cond``, or the branch itself where ``pred`` is a Python bool."""
        if isinstance(pred, bool):
            return (true_fn if pred else false_fn)(*args)
        return jax.lax.cond(pred, true_fn, false_fn, *args)

    def checkpoint(run, s, v):
        """ρ with the new leaf's p, and the checkpoints with its (p, p♯, ρ) where it
        starts subtrees (an even leaf). Outside the scheme's ``lax.cond``, which would
        otherwise copy the checkpoints in and out at every step."""
        p = momentum_fn(s)
        rho = run.rho + p
        hi = _checkpoint_range(run.i)[1]
        p_ck, v_ck, rho_ck = run.checkpoints
        # written at an even leaf of the tree only; elsewhere the row index is out of
        # range and the write is dropped (no read-and-select of a row every step)
        row = jnp.where(((run.i % 2) == 0) & use_tree, hi, p_ck.shape[0])
        p_ck = p_ck.at[row].set(p, mode="drop")
        v_ck = v_ck.at[row].set(v, mode="drop")
        rho_ck = rho_ck.at[row].set(rho, mode="drop")
        return rho, (p_ck, v_ck, rho_ck)

    def leaf(run, s, h, v, info, rho, checkpoints):
        """A new leaf of the tree's current subtree (Betancourt 2017, A.3)."""
        key, k_take = random.split(run.key)
        delta = h - h0
        delta = jnp.where(info.ok & ~jnp.isnan(delta), delta, jnp.inf)
        new_log_w = jnp.logaddexp(run.log_weight, -delta)
        take_prob = jnp.where(jnp.isfinite(new_log_w), jnp.exp(-delta - new_log_w), 0.0)
        take = random.uniform(k_take, dtype=dtype) < take_prob
        # the subtrees that end at leaf i: checked against the checkpointed first
        # leaf of each (an even leaf i starts some and ends none)
        lo, hi = _checkpoint_range(run.i)
        p_ck, v_ck, rho_ck = checkpoints

        def check(c):
            j, _ = c
            rho_sub = rho - rho_ck[j] + p_ck[j]
            return j - 1, _turning(v_ck[j], v, rho_sub)

        _, turning = jax.lax.while_loop(
            lambda c: (c[0] >= lo) & ~c[1], check, (hi, jnp.bool_(False))
        )
        return run._replace(
            proposal=_select(take, s, run.proposal),
            proposal_energy=jnp.where(take, h, run.proposal_energy),
            log_weight=new_log_w,
            rho=rho,
            sum_accept=run.sum_accept + jnp.clip(jnp.exp(-delta), 0.0, 1.0),
            key=key,
            turning=turning,
            failed=delta > max_delta_energy,
        )

    def draw(run, s, h):
        """The opening window's multinomial draw of a static trajectory's state."""
        delta = jnp.where(~run.failed & jnp.isfinite(h), h - h0, jnp.inf)
        new_log_w = jnp.logaddexp(run.log_weight, -delta)
        key, sub = random.split(run.key)
        take = random.uniform(sub, dtype=dtype) < jnp.exp(-delta - new_log_w)
        return run._replace(
            proposal=_select(take, s, run.proposal),
            proposal_energy=jnp.where(take, h, run.proposal_energy),
            log_weight=new_log_w,
            sum_accept=run.sum_accept + jnp.clip(jnp.exp(-delta), 0.0, 1.0),
            key=key,
            failed=run.failed | (delta > max_delta_energy),
        )

    def static_step(run, s, h, v, info, rho, checkpoints):
        run = run._replace(failed=run.failed | ~info.ok)
        return cond_or(multinomial, draw, lambda run, s, h: run, run, s, h)

    def steps(run, signed_step, num):
        """Steps from ``run.state`` until ``num``, a failure or (the tree) a U-turn."""

        def cond(run):
            return (run.i < num) & ~run.turning & ~run.failed

        def body(run):
            s, info = step_fn(run.state, signed_step)
            # H and p♯ at every tree leaf and multinomial draw (the static end point's
            # after the loop: a condition on the step count would be batched under
            # vmap, and evaluate them at every step)
            need = use_tree | multinomial
            h, v = cond_or(need, energy_fn, lambda s: (run.energy, run.velocity), s)
            rho, checkpoints = run.rho, run.checkpoints
            if not static_only:
                rho, checkpoints = checkpoint(run, s, v)
            run = cond_or(
                use_tree,
                leaf,
                static_step,
                run._replace(checkpoints=None),
                s,
                h,
                v,
                info,
                rho,
                checkpoints,
            )
            return run._replace(
                checkpoints=checkpoints,
                i=run.i + 1,
                state=s,
                velocity=v,
                energy=h,
                iters=jnp.maximum(run.iters, info.fixed_point_iters),
            )

        return jax.lax.while_loop(cond, body, run)

    def fresh(start, log_weight, key):
        return _Run(
            i=zero_i,
            state=start,
            velocity=v0,
            energy=h0,
            proposal=start,
            proposal_energy=h0,
            log_weight=jnp.asarray(log_weight, dtype),
            rho=None if p0 is None else jnp.zeros_like(p0),
            sum_accept=jnp.zeros((), dtype),
            checkpoints=(ckpt, ckpt, ckpt),
            key=key,
            turning=jnp.bool_(False),
            failed=jnp.bool_(False),
            iters=zero_i,
        )

    def double(tree, key):
        """One doubling: 2^depth new leaves beyond the tree's end in a random direction."""
        key, k_dir, k_sub, k_take = random.split(key, 4)
        going_right = random.bernoulli(k_dir)
        signed_step = jnp.where(going_right, step_size, -step_size)
        start = _select(going_right, tree.right, tree.left)
        run = fresh(start, -jnp.inf, k_sub)
        return going_right, signed_step, run, k_take, key

    def merge(tree, going_right, run, k_take):
        left = _select(going_right, tree.left, run.state)
        right = _select(going_right, run.state, tree.right)
        v_left = jnp.where(going_right, tree.v_left, run.velocity)
        v_right = jnp.where(going_right, run.velocity, tree.v_right)
        rho_all = tree.rho + run.rho
        # biased progressive sampling: prefer the new half, never from a bad one
        take_prob = jnp.where(
            run.turning | run.failed,
            0.0,
            jnp.clip(jnp.exp(run.log_weight - tree.log_weight), 0.0, 1.0),
        )
        take = random.uniform(k_take, dtype=dtype) < take_prob
        return _Tree(
            left=left,
            right=right,
            v_left=v_left,
            v_right=v_right,
            proposal=_select(take, run.proposal, tree.proposal),
            proposal_energy=jnp.where(take, run.proposal_energy, tree.proposal_energy),
            log_weight=jnp.logaddexp(tree.log_weight, run.log_weight),
            rho=rho_all,
            depth=tree.depth + 1,
            num_steps=tree.num_steps + run.i,
            sum_accept=tree.sum_accept + run.sum_accept,
            turning=run.turning | _turning(v_left, v_right, rho_all),
            diverging=run.failed,
            iters=jnp.maximum(tree.iters, run.iters),
        )

    key_take = random.fold_in(rng_key, 1)

    def pass_(carry):
        """One doubling of the tree, or the static trajectory; the inner loop is shared."""
        tree, key, _, _ = carry
        if static_only:
            going_right, signed_step, num = True, step_size, num_steps
            run = fresh(state, 0.0, key_take)
        else:
            going_right, signed_step, run, k_take, key = double(tree, key)
            num = jnp.left_shift(jnp.int32(1), tree.depth)
            if not tree_only:  # traced: the static trajectory where use_tree is false
                signed_step = jnp.where(use_tree, signed_step, step_size)
                num = jnp.where(use_tree, num, num_steps)
                run = _select(use_tree, run, fresh(state, 0.0, key_take))
        run = steps(run, signed_step, num)
        if not static_only:
            tree = cond_or(use_tree, lambda: merge(tree, going_right, run, k_take), lambda: tree)
        return tree, key, jnp.bool_(True), run

    def more(carry):
        tree, _, started, _ = carry
        growing = (tree.depth < max_tree_depth) & ~tree.turning & ~tree.diverging
        if fixed:
            return growing if use_tree else ~started
        return jnp.where(use_tree, growing, ~started)

    blank = fresh(state, 0.0, key_take)
    tree, _, _, run = jax.lax.while_loop(more, pass_, (tree, rng_key, jnp.bool_(False), blank))

    def sampled(sum_accept, num, diverging, energy, iters):
        """A state drawn along the trajectory: its info, the mean acceptance over it."""
        return TransitionInfo(
            accept_prob=sum_accept / jnp.maximum(num, 1),
            diverging=diverging,
            energy=energy,
            num_steps=num,
            num_grad_evals=num * grads_per_step,
            fixed_point_iters=iters,
            accepted=jnp.bool_(False),
        )

    def tree_result():
        return tree.proposal, sampled(
            tree.sum_accept, tree.num_steps, tree.diverging, tree.proposal_energy, tree.iters
        )

    def drawn():
        return run.proposal, sampled(
            run.sum_accept, run.i, run.failed, run.proposal_energy, run.iters
        )

    def end_point():
        h1, _ = energy_fn(run.state)
        delta = h1 - h0
        ok = ~run.failed & jnp.isfinite(delta)
        accept_prob = jnp.where(ok, jnp.clip(jnp.exp(-delta), 0.0, 1.0), 0.0)
        accept = ok & (take | (random.uniform(rng_key, dtype=dtype) < accept_prob))
        return _select(accept, run.state, state), TransitionInfo(
            accept_prob=accept_prob,
            diverging=~ok | (delta > max_delta_energy),
            energy=jnp.where(accept, h1, h0),
            num_steps=run.i,
            num_grad_evals=run.i * grads_per_step,
            fixed_point_iters=run.iters,
            accepted=accept,
        )

    def static_result():
        return cond_or(multinomial, drawn, end_point)

    return cond_or(use_tree, tree_result, static_result)


# a rejected static trajectory with an acceptance below RETRY_BELOW (a divergent one:
# 0) is tried again with the step size divided by RETRY_FACTOR
RETRY_BELOW = 0.01
RETRY_FACTOR = 2


def retried(
    attempt: Callable,
    state,
    step_size: Array,
    num_steps: Array,
    retry_steps: Array,
    use_tree: bool | Array = False,
    multinomial: bool | Array = False,
    *,
    rng_key: PRNGKey,
):
    """A static transition that, where its trajectory is rejected with an acceptance
    below :data:`RETRY_BELOW` (a divergent one has 0), is tried once more by delayed
    rejection (Modi, Barnett & Carpenter 2024): from the same state and momenta, with
    the step size divided by :data:`RETRY_FACTOR` and ``retry_steps`` steps (0: no
    retry).

    ``attempt(start, step_size, num_steps, stage, use_tree, multinomial, take)`` is one
    transition of :func:`static_or_tree` from ``start`` (its momenta drawn), with the
    random numbers of ``stage``. A chain in a region that is stiff for its step size
    otherwise rejects every trajectory there (a BNN's chain sat 270 draws on one
    state, docs/design.md §6); the smaller step gets it out, and its draws stay exact.

    Delayed rejection accepts the second proposal x₂ with probability
    min(1, π(x₂)(1 − α₁(x₂)) β(x₂) / (π(x₀)(1 − α₁(x₀)))), where α₁(x) is the first
    stage's acceptance from x and β(x) whether the second stage is tried from x, here
    α₁(x) < RETRY_BELOW. α₁(x₂) is that of the first stage run from x₂ with its momenta
    reversed (the "ghost", ``-step_size`` from x₂). One uniform u decides; the ghost is
    run only where u is below the ratio's bound π(x₂) / (π(x₀)(1 − α₁(x₀))).
    A trigger on divergences alone is asymmetric where most rejections do not diverge
    (a chain of the diabetes BNN sat in such a region, docs/design.md §6).
    Which trajectories diverge and the acceptance reported (the first stage's, which
    step-size adaptation reads) are unchanged; the gradients count all three.
    The tree and the opening window's multinomial draw are never retried.

    Modi, C., Barnett, A. and Carpenter, B. (2024). Delayed rejection Hamiltonian Monte
    Carlo for sampling multiscale distributions. Bayesian Analysis.
    Tierney, L. and Mira, A. (1999). Some adaptive Monte Carlo methods for Bayesian
    inference. Statistics in Medicine 18, 2507-2515.
    """
    dtype = jnp.result_type(step_size)
    u = random.uniform(rng_key, dtype=dtype)  # the second stage's test

    def flag(x, stage):  # a Python bool stays one: a static-only model compiles no tree
        return x if isinstance(x, bool) else x & (stage == 0)

    may_tree = not isinstance(use_tree, bool) or use_tree

    def body(c):
        stage, start, size, steps, first, result, energy, total, moved = c
        new, info = attempt(
            start,
            size,
            steps,
            stage,
            flag(use_tree, stage),
            flag(multinomial, stage),
            stage == 1,
        )
        if may_tree:  # compile time, see _kept_apart
            info = info._replace(num_steps=_kept_apart(info.num_steps))
        low = info.accept_prob < RETRY_BELOW
        retry = (stage == 0) & ~info.accepted & low & (retry_steps > 0)
        if may_tree:
            retry = retry & ~use_tree
        if not isinstance(multinomial, bool) or multinomial:
            retry = retry & ~multinomial
        first = _select(stage == 0, info, first)
        # π(x₂) / (π(x₀)(1 − α₁(x₀))): x₂'s energy from stage 1, or carried to stage 2;
        # 1 − α₁(x₀) > 1 − RETRY_BELOW wherever it is read
        h2 = jnp.where(stage == 1, info.energy, energy)
        bound = jnp.exp(jnp.minimum(first.energy - h2, 50.0)) / (1.0 - first.accept_prob)
        ghost = (stage == 1) & info.accepted & (u < bound)
        # stage 2 ran the ghost from x₂ (its start): x₂ is kept or the chain stays at x₀
        kept = (stage == 2) & low & (u < bound * (1.0 - info.accept_prob))
        result = _select(stage == 0, new, _select(kept, start, state))
        energy = jnp.where(stage == 0, info.energy, jnp.where(ghost | kept, h2, first.energy))
        total = (
            total[0] + info.num_steps,
            total[1] + info.num_grad_evals,
            jnp.maximum(total[2], info.fixed_point_iters),
        )
        moved = jnp.where(stage == 0, info.accepted, kept)
        return (
            jnp.where(retry, 1, jnp.where(ghost, 2, 3)).astype(jnp.int32),
            _select(ghost, new, state),
            jnp.where(retry, size / RETRY_FACTOR, -step_size).astype(dtype),
            jnp.where(retry, retry_steps, num_steps).astype(jnp.int32),
            first,
            result,
            energy,
            total,
            moved,
        )

    i32 = jnp.int32(0)
    init = (
        i32,
        state,
        jnp.asarray(step_size, dtype),
        jnp.asarray(num_steps, jnp.int32),
        TransitionInfo.blank(dtype),
        state,
        jnp.zeros((), dtype),
        (i32, i32, i32),
        jnp.bool_(False),
    )
    _, _, _, _, first, new, energy, total, moved = jax.lax.while_loop(
        lambda c: c[0] < 3, body, init
    )
    return new, first._replace(
        energy=energy,
        num_steps=total[0],
        num_grad_evals=total[1],
        fixed_point_iters=total[2],
        accepted=moved,
    )
