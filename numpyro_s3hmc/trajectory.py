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


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


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
    h0, _ = energy_fn(state)
    key_take = random.fold_in(rng_key, 1)
    fixed = isinstance(multinomial, bool)

    def draw(args):
        s, ok, prop, prop_h, log_w, acc, key = args
        h, _ = energy_fn(s)
        delta = jnp.where(ok & jnp.isfinite(h), h - h0, jnp.inf)
        new_log_w = jnp.logaddexp(log_w, -delta)
        key, sub = random.split(key)
        take = random.uniform(sub, dtype=h0.dtype) < jnp.exp(-delta - new_log_w)
        prop, prop_h, log_w = _select(take, s, prop), jnp.where(take, h, prop_h), new_log_w
        acc = acc + jnp.clip(jnp.exp(-delta), 0.0, 1.0)
        return ok & (delta <= max_delta_energy), prop, prop_h, log_w, acc, key

    def body(carry):
        s, i, ok, iters, prop, prop_h, log_w, acc, key = carry
        s, info = step_fn(s, step_size)
        ok = ok & info.ok
        args = (s, ok, prop, prop_h, log_w, acc, key)
        if fixed and multinomial:
            ok, prop, prop_h, log_w, acc, key = draw(args)
        elif not fixed:
            ok, prop, prop_h, log_w, acc, key = jax.lax.cond(
                multinomial, draw, lambda a: a[1:], args
            )
        return (
            s,
            i + 1,
            ok,
            jnp.maximum(iters, info.fixed_point_iters),
            prop,
            prop_h,
            log_w,
            acc,
            key,
        )

    def cond(carry):
        _, i, ok = carry[:3]
        return (i < num_steps) & ok

    zero = jnp.zeros((), h0.dtype)
    init = (state, jnp.int32(0), jnp.bool_(True), jnp.int32(0), state, h0, zero, zero, key_take)
    end, steps, ok, iters, prop, prop_h, _, acc, _ = jax.lax.while_loop(cond, body, init)
    drawn = TransitionInfo(
        accept_prob=acc / jnp.maximum(steps, 1),
        diverging=~ok,
        energy=prop_h,
        num_steps=steps,
        num_grad_evals=steps * grads_per_step,
        fixed_point_iters=iters,
    )
    if fixed and multinomial:
        return prop, drawn
    h1, _ = energy_fn(end)
    delta = h1 - h0
    ok = ok & jnp.isfinite(delta)
    diverging = ~ok | (delta > max_delta_energy)
    accept_prob = jnp.where(ok, jnp.clip(jnp.exp(-delta), 0.0, 1.0), 0.0)
    accept = ok & (random.uniform(rng_key, dtype=h0.dtype) < accept_prob)
    info = TransitionInfo(
        accept_prob=accept_prob,
        diverging=diverging,
        energy=jnp.where(accept, h1, h0),
        num_steps=steps,
        num_grad_evals=steps * grads_per_step,
        fixed_point_iters=iters,
    )
    if fixed:
        return _select(accept, end, state), info
    return _select(multinomial, (prop, drawn), (_select(accept, end, state), info))


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
    h0, v0 = energy_fn(state)
    p0 = momentum_fn(state)
    dtype = h0.dtype
    zero_i = jnp.int32(0)
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
    ckpt = jnp.zeros((max(max_tree_depth, 1), p0.size), dtype)

    def leaf(s, signed_step):
        s, info = step_fn(s, signed_step)
        h, v = energy_fn(s)
        delta = h - h0
        delta = jnp.where(info.ok & ~jnp.isnan(delta), delta, jnp.inf)
        return s, h, v, delta, info.fixed_point_iters

    def subtree(tree, going_right, key):
        """2^depth new leaves beyond the tree's end in the chosen direction."""
        signed_step = jnp.where(going_right, step_size, -step_size)
        start = _select(going_right, tree.right, tree.left)
        num_leaves = jnp.left_shift(jnp.int32(1), tree.depth)

        def cond(carry):
            i, *_, turning, diverging, _ = carry
            return (i < num_leaves) & ~turning & ~diverging

        def body(carry):
            i, s, _, prop, prop_h, log_w, rho, acc, ckpts, key, _, _, iters = carry
            key, k_take = random.split(key)
            s, h, v, delta, it = leaf(s, signed_step)
            p = momentum_fn(s)
            new_log_w = jnp.logaddexp(log_w, -delta)
            take_prob = jnp.where(jnp.isfinite(new_log_w), jnp.exp(-delta - new_log_w), 0.0)
            take = random.uniform(k_take, dtype=dtype) < take_prob
            prop = _select(take, s, prop)
            prop_h = jnp.where(take, h, prop_h)
            rho = rho + p
            acc = acc + jnp.clip(jnp.exp(-delta), 0.0, 1.0)
            diverging = delta > max_delta_energy
            # the subtrees that end at leaf i: checked against the checkpointed first
            # leaf of each (an even leaf i starts some and ends none)
            lo, hi = _checkpoint_range(i)
            even = (i % 2) == 0
            p_ck, v_ck, rho_ck = ckpts
            p_ck = p_ck.at[hi].set(jnp.where(even, p, p_ck[hi]))
            v_ck = v_ck.at[hi].set(jnp.where(even, v, v_ck[hi]))
            rho_ck = rho_ck.at[hi].set(jnp.where(even, rho, rho_ck[hi]))

            def check(c):
                j, _ = c
                rho_sub = rho - rho_ck[j] + p_ck[j]
                return j - 1, _turning(v_ck[j], v, rho_sub)

            _, turning = jax.lax.while_loop(
                lambda c: (c[0] >= lo) & ~c[1], check, (hi, jnp.bool_(False))
            )
            return (
                i + 1,
                s,
                v,
                prop,
                prop_h,
                new_log_w,
                rho,
                acc,
                (p_ck, v_ck, rho_ck),
                key,
                turning,
                diverging,
                jnp.maximum(iters, it),
            )

        init = (
            zero_i,
            start,
            v0,
            start,
            h0,
            jnp.asarray(-jnp.inf, dtype),
            jnp.zeros_like(p0),
            jnp.zeros((), dtype),
            (ckpt, ckpt, ckpt),
            key,
            jnp.bool_(False),
            jnp.bool_(False),
            zero_i,
        )
        out = jax.lax.while_loop(cond, body, init)
        steps, end, v_end, prop, prop_h, log_w, rho, acc, _, _, turning, diverging, iters = out
        return steps, end, v_end, prop, prop_h, log_w, rho, acc, turning, diverging, iters

    def double(carry):
        tree, key = carry
        key, k_dir, k_sub, k_take = random.split(key, 4)
        going_right = random.bernoulli(k_dir)
        steps, end, v_end, prop, prop_h, log_w, rho, acc, turning, diverging, iters = subtree(
            tree, going_right, k_sub
        )
        left = _select(going_right, tree.left, end)
        right = _select(going_right, end, tree.right)
        v_left = jnp.where(going_right, tree.v_left, v_end)
        v_right = jnp.where(going_right, v_end, tree.v_right)
        rho_all = tree.rho + rho
        # biased progressive sampling: prefer the new half, never from a bad one
        take_prob = jnp.where(
            turning | diverging, 0.0, jnp.clip(jnp.exp(log_w - tree.log_weight), 0.0, 1.0)
        )
        take = random.uniform(k_take, dtype=dtype) < take_prob
        tree = _Tree(
            left=left,
            right=right,
            v_left=v_left,
            v_right=v_right,
            proposal=_select(take, prop, tree.proposal),
            proposal_energy=jnp.where(take, prop_h, tree.proposal_energy),
            log_weight=jnp.logaddexp(tree.log_weight, log_w),
            rho=rho_all,
            depth=tree.depth + 1,
            num_steps=tree.num_steps + steps,
            sum_accept=tree.sum_accept + acc,
            turning=turning | _turning(v_left, v_right, rho_all),
            diverging=diverging,
            iters=jnp.maximum(tree.iters, iters),
        )
        return tree, key

    def keep_going(carry):
        tree, _ = carry
        return (tree.depth < max_tree_depth) & ~tree.turning & ~tree.diverging

    tree, _ = jax.lax.while_loop(keep_going, double, (tree, rng_key))
    info = TransitionInfo(
        accept_prob=tree.sum_accept / jnp.maximum(tree.num_steps, 1),
        diverging=tree.diverging,
        energy=tree.proposal_energy,
        num_steps=tree.num_steps,
        num_grad_evals=tree.num_steps * grads_per_step,
        fixed_point_iters=tree.iters,
    )
    return tree.proposal, info
