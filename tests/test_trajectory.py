"""The trajectory schemes on their own, over a plain leapfrog on known targets."""

from typing import NamedTuple

import numpy as np
import pytest
from exact_answers import assert_mean

import jax
import jax.numpy as jnp

from numpyro_s3hmc import trajectory
from numpyro_s3hmc.integrators import StepInfo

COV = jnp.array([[1.0, 0.9], [0.9, 1.0]])
PREC = jnp.linalg.inv(COV)
MASS = jnp.array([2.0, 0.5])  # a diagonal mass matrix, so p♯ = p / m is not p


class State(NamedTuple):
    x: jnp.ndarray
    p: jnp.ndarray
    grad: jnp.ndarray


def potential(x):
    return 0.5 * x @ PREC @ x


def leapfrog(s, eps):
    p = s.p - 0.5 * eps * s.grad
    x = s.x + eps * p / MASS
    grad = jax.grad(potential)(x)
    p = p - 0.5 * eps * grad
    return State(x, p, grad), StepInfo(jnp.all(jnp.isfinite(x)), jnp.int32(0))


def energy(s):
    return potential(s.x) + 0.5 * jnp.sum(s.p**2 / MASS), s.p / MASS


def chain(step_size, num_draws, seed, max_tree_depth=10, step=leapfrog):
    def transition(x, key):
        key_p, key_t = jax.random.split(key)
        p = jnp.sqrt(MASS) * jax.random.normal(key_p, (2,))
        s = State(x, p, jax.grad(potential)(x))
        new, info = trajectory.no_u_turn(
            key_t, s, step, 1, energy, step_size, lambda s: s.p, max_tree_depth
        )
        return new.x, (new.x, info)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_draws)
    return jax.jit(lambda: jax.lax.scan(transition, jnp.zeros(2), keys))()[1]


def test_no_u_turn_is_exact_on_a_correlated_gaussian():
    # two step sizes: a fine one (deep trees) and a coarse one (many rejections)
    for step_size, seed in [(0.1, 0), (0.4, 1)]:
        x, info = chain(step_size, 20_000, seed)
        x = np.asarray(x).T[:, None, :]  # (coordinate, chain, draw)
        assert_mean(x[0], 0.0, f"E[x0] at {step_size}", min_ess=2000)
        assert_mean(x[1], 0.0, f"E[x1] at {step_size}", min_ess=2000)
        assert_mean(x[0] ** 2, 1.0, f"E[x0^2] at {step_size}", min_ess=2000)
        assert_mean(x[0] * x[1], 0.9, f"E[x0 x1] at {step_size}", min_ess=2000)
        assert not bool(info.diverging.any())


def test_no_u_turn_stops_at_the_u_turn_and_counts_its_steps():
    _, info = chain(0.1, 500, 2)
    steps = np.asarray(info.num_steps)
    np.testing.assert_array_equal(np.asarray(info.num_grad_evals), steps)
    # the fast direction (period 2π/sqrt(λ_max(M⁻¹Σ⁻¹)) ≈ 1.2) turns first: trees of
    # ~20 steps of 0.1 (measured 21.7 on average), far from the cap of 2^10 − 1
    assert np.median(steps) < 100
    assert steps.max() < 1023
    _, capped = chain(0.1, 200, 3, max_tree_depth=3)
    assert int(np.max(capped.num_steps)) == 7  # 1 + 2 + 4 leaves when nothing turns


def test_a_failed_step_is_a_divergence_and_never_the_draw():
    def failing(s, eps):
        new, info = leapfrog(s, eps)
        bad = jnp.abs(new.x[0]) > 1.5  # the step "fails" beyond |x0| = 1.5
        return new, StepInfo(info.ok & ~bad, info.fixed_point_iters)

    x, info = chain(0.1, 2000, 4, step=failing)
    assert bool(info.diverging.any())
    assert float(np.abs(np.asarray(x)[:, 0]).max()) <= 1.5


def test_static_counts_gradients_and_rejects_a_failed_trajectory():
    s = State(jnp.zeros(2), jnp.array([3.0, 0.0]), jnp.zeros(2))

    def failing(s, eps):
        new, info = leapfrog(s, eps)
        return new, StepInfo(info.ok & (jnp.abs(new.x[0]) < 0.5), info.fixed_point_iters)

    new, info = trajectory.static(jax.random.PRNGKey(0), s, leapfrog, 3, energy, 0.1, 10)
    assert int(info.num_steps) == 10 and int(info.num_grad_evals) == 30
    new, info = trajectory.static(jax.random.PRNGKey(0), s, failing, 3, energy, 0.1, 10)
    assert bool(info.diverging) and float(info.accept_prob) == 0.0
    assert int(info.num_steps) < 10  # stopped at the failed step
    np.testing.assert_array_equal(np.asarray(new.x), np.zeros(2))


def test_kernel_rejects_an_unknown_trajectory():
    from numpyro_s3hmc import S3HMC

    with pytest.raises(ValueError, match="trajectory must be one of"):
        S3HMC(lambda: None, trajectory="tree")


def test_multinomial_static_draws_along_the_trajectory_by_energy():
    # the warmup-only variant: a state of the trajectory in proportion to exp(H0 - H)
    s = State(
        jnp.array([3.0, -3.0]), jnp.array([1.0, 0.5]), jax.grad(potential)(jnp.array([3.0, -3.0]))
    )
    h0 = float(energy(s)[0])
    key = jax.random.PRNGKey(0)
    # a stable step: every state weighs about the same, so the draw moves the chain
    moved, info = trajectory.static(key, s, leapfrog, 1, energy, 0.05, 40, multinomial=True)
    assert not np.array_equal(np.asarray(moved.x), np.asarray(s.x))
    assert abs(float(energy(moved)[0]) - h0) < 1.0 and float(info.accept_prob) > 0.5
    # past the stability limit (≈ 0.45) the energy explodes: the end point is rejected,
    # and the multinomial draw never takes a blown-up state
    end, info = trajectory.static(key, s, leapfrog, 1, energy, 0.6, 40)
    assert float(info.accept_prob) < 1e-6
    np.testing.assert_array_equal(np.asarray(end.x), np.asarray(s.x))
    drawn, info = trajectory.static(key, s, leapfrog, 1, energy, 0.6, 40, multinomial=True)
    assert float(energy(drawn)[0]) < h0 + 5.0
    assert bool(info.diverging) and int(info.num_steps) < 40


@pytest.mark.parametrize("multinomial", [True, False])
def test_static_with_a_traced_multinomial_flag_is_the_fixed_scheme(multinomial):
    # the kernel passes the opening window's flag traced, so that one loop serves both
    s = State(
        jnp.array([3.0, -3.0]), jnp.array([1.0, 0.5]), jax.grad(potential)(jnp.array([3.0, -3.0]))
    )
    key = jax.random.PRNGKey(2)
    for size in (0.05, 0.6):  # stable, and past the stability limit
        fixed = trajectory.static(key, s, leapfrog, 1, energy, size, 40, multinomial=multinomial)
        traced = jax.jit(
            lambda flag: trajectory.static(key, s, leapfrog, 1, energy, size, 40, multinomial=flag)
        )(jnp.bool_(multinomial))
        for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(traced), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# the tree has no multinomial variant (the kernel never asks for one)
@pytest.mark.parametrize("use_tree, multinomial", [(True, False), (False, True), (False, False)])
def test_static_or_tree_with_traced_flags_is_the_fixed_scheme(use_tree, multinomial):
    # trajectory="auto" passes both flags traced, so that the tree and the static length
    # share one loop and one compiled step: the same draws as each scheme on its own
    s = State(
        jnp.array([3.0, -3.0]), jnp.array([1.0, 0.5]), jax.grad(potential)(jnp.array([3.0, -3.0]))
    )
    key = jax.random.PRNGKey(2)
    for size in (0.05, 0.3, 0.6):  # deep trees, short ones, and past the stability limit
        if use_tree:
            fixed = trajectory.no_u_turn(key, s, leapfrog, 1, energy, size, lambda s: s.p, 10)
        else:
            fixed = trajectory.static(
                key, s, leapfrog, 1, energy, size, 40, multinomial=multinomial
            )
        traced = jax.jit(
            lambda tree, flag: trajectory.static_or_tree(
                key, s, leapfrog, 1, energy, size, 40, lambda s: s.p, tree, multinomial=flag
            )
        )(jnp.bool_(use_tree), jnp.bool_(multinomial))
        for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(traced), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_auto_tries_both_schemes_in_the_first_half_of_the_last_slow_window():
    from numpyro.infer.hmc_util import build_adaptation_schedule

    from numpyro_s3hmc.adaptation import trial_window

    first, last = build_adaptation_schedule(1000)[-2]  # the last slow window
    assert trial_window(1000) == (first, first + (last - first) // 2) == (450, 699)
    assert trial_window(400) == (150, 249)  # the shortest trial: 100 transitions
    # no slow window, or too short a trial to compare the schemes: the static length
    assert trial_window(0) is None and trial_window(10) is None and trial_window(300) is None


def test_auto_prefers_the_scheme_that_moves_the_slowest_coordinates_further_per_gradient():
    from numpyro_s3hmc.adaptation import MetricAdaptState, prefer_tree

    def state(static, tree, grads):
        zeros = jnp.zeros(2)
        return MetricAdaptState(
            *(zeros,) * 5,
            jnp.int32(0),
            1.0,
            jnp.bool_(False),
            jnp.array([static, tree]),
            grads,
            1.0,
            jnp.int32(0),
        )

    # 20 θ elements and one η: per gradient the tree moves θ twice as far, η 4×
    theta, eta = [1.0] * 20, [4.0]
    both = jnp.array([10.0, 10.0])
    assert bool(prefer_tree(state(theta + [1.0], [2.0] * 20 + eta, both), 20))
    # ... but η only as far: the slower block decides, a tie keeps the static length
    assert not bool(prefer_tree(state(theta + [1.0], [2.0] * 20 + [1.0], both), 20))
    # the same jumps at 5× the gradients: the static length wins
    grads = jnp.array([10.0, 50.0])
    assert not bool(prefer_tree(state(theta + [1.0], [2.0] * 20 + eta, grads), 20))
    # a BNN in whitened coordinates: the static length moves a third of the weights
    # 100× less, which the 10% quantile sees and the mean would not
    slow = [0.01] * 7 + [3.0] * 13
    assert bool(prefer_tree(state(slow + eta, theta + eta, both), 20))
    assert float(jnp.mean(jnp.array(slow))) > 1.0
    # no hyperparameters: θ alone decides
    assert not bool(prefer_tree(state(theta, [0.5] * 20, both), 20))


def stiff_outside(s, eps):
    """The leapfrog, except that a coarse step (|ε| > 0.15) fails where it starts or
    ends beyond |x0| = 1.2: a region that is stiff for the chain's step size only. The
    failure is a property of the step's two ends, so a trajectory fails from either end."""
    new, info = leapfrog(s, eps)
    outside = (jnp.abs(s.x[0]) > 1.2) | (jnp.abs(new.x[0]) > 1.2)
    return new, StepInfo(info.ok & ~(outside & (jnp.abs(eps) > 0.15)), info.fixed_point_iters)


def retried_chain(retry, num_draws, seed, step=stiff_outside, step_size=0.2):
    """Static transitions of 10-30 steps, a rejected one with an acceptance below
    ``trajectory.RETRY_BELOW`` (a divergent one) retried at half the step size
    with four times the steps where ``retry``: twice as long, so that the ghost (the
    first stage from the retry's end) often misses the region the first stage failed
    in, which a retry without it would not see."""

    def transition(x, key):
        key_p, key_t, key_n = jax.random.split(key, 3)
        p = jnp.sqrt(MASS) * jax.random.normal(key_p, (2,))
        s = State(x, p, jax.grad(potential)(x))
        n = jax.random.randint(key_n, (), 10, 31)

        def attempt(start, size, steps, stage, use_tree, multinomial, take):
            k = jnp.where(stage == 0, key_t, jax.random.fold_in(key_t, stage))
            return trajectory.static_or_tree(
                k, start, step, 1, energy, size, steps, None, False, take=take
            )

        retry_steps = jnp.where(retry, 4 * n, 0)
        key_u = jax.random.fold_in(key_t, 3)
        new, info = trajectory.retried(attempt, s, step_size, n, retry_steps, rng_key=key_u)
        return new.x, (new.x, info)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_draws)
    return jax.jit(lambda: jax.lax.scan(transition, jnp.zeros(2), keys))()[1]


def test_delayed_rejection_of_a_divergent_trajectory_is_exact():
    x, info = retried_chain(True, 20_000, 0)
    x = np.asarray(x).T[:, None, :]  # (coordinate, chain, draw)
    # the region the coarse step fails in is visited as often as the target says
    outside = float(2 * jax.scipy.stats.norm.sf(1.2))  # P(|x0| > 1.2) = 0.23
    assert_mean(np.abs(x[0]) > 1.2, outside, "P(|x0| > 1.2)", min_ess=2000)
    assert_mean(x[0], 0.0, "E[x0]", min_ess=2000)
    assert_mean(x[0] ** 2, 1.0, "E[x0^2]", min_ess=2000)
    assert_mean(x[0] * x[1], 0.9, "E[x0 x1]", min_ess=2000)
    divergent = np.asarray(info.diverging)
    assert 0.1 < divergent.mean() < 0.9  # the first stage's divergences are reported
    # a retry costs its own steps and, where its end point passed, the ghost's: n + 4n + n
    grads, steps = np.asarray(info.num_grad_evals), np.asarray(info.num_steps)
    np.testing.assert_array_equal(grads, steps)
    assert steps[~divergent].max() <= 30 and steps[divergent].max() > 120
    # without the retry the chain never enters the region: the test above can fail
    x, info = retried_chain(False, 5_000, 0)
    assert float(np.mean(np.abs(np.asarray(x)[:, 0]) > 1.2)) == 0.0
    assert int(np.asarray(info.num_steps).max()) <= 30


def test_delayed_rejection_moves_a_chain_past_the_stability_limit():
    # at ε = 0.6 nearly every leapfrog trajectory of 10-30 steps blows up (the limit is
    # about 0.57): the retry at 0.3 is what moves the chain, and its draws are exact
    x, info = retried_chain(True, 10_000, 1, step=leapfrog, step_size=0.6)
    assert float(np.mean(np.asarray(info.diverging))) > 0.9
    assert float(np.mean(np.asarray(info.accept_prob))) < 0.05  # the first stage's
    x = np.asarray(x).T[:, None, :]
    assert_mean(x[0] ** 2, 1.0, "E[x0^2]", min_ess=1000)
    assert_mean(x[0] * x[1], 0.9, "E[x0 x1]", min_ess=1000)


def biased_outside(s, eps):
    """A coarse step (|ε| > 0.15) is the leapfrog of U plus 20 (|x0| − 1.2)² beyond
    |x0| = 1.2, still reversible and volume-preserving: a trajectory that starts out
    there and ends inside is rejected with a small acceptance and no divergence, one
    that starts inside seldom is. A trigger that fires on one side only: the retry's
    ghost is what keeps the chain exact."""
    coarse = jnp.abs(eps) > 0.15
    bump = lambda x: 20.0 * jnp.maximum(jnp.abs(x[0]) - 1.2, 0.0) ** 2  # noqa: E731
    force = lambda x: jax.grad(potential)(x) + jnp.where(coarse, jax.grad(bump)(x), 0.0)  # noqa: E731
    p = s.p - 0.5 * eps * force(s.x)
    x = s.x + eps * p / MASS
    p = p - 0.5 * eps * force(x)
    return State(x, p, jax.grad(potential)(x)), StepInfo(jnp.all(jnp.isfinite(x)), jnp.int32(0))


def test_delayed_rejection_of_a_small_acceptance_is_exact():
    # 100,000 draws: an ESS of 600-700 (372 from 60,000 with jax 0.12.1)
    x, info = retried_chain(True, 100_000, 0, step=biased_outside)
    steps, diverging = np.asarray(info.num_steps), np.asarray(info.diverging)
    retried = steps > 30
    assert retried.mean() > 0.05 and not diverging.any()
    assert np.asarray(info.accept_prob)[retried].max() < trajectory.RETRY_BELOW
    x = np.asarray(x).T[:, None, :]
    # without the ghost (x₂ taken on π(x₂) / (π(x₀)(1 − α₁(x₀))) alone), or with x₂
    # taken where the ghost would not retry (β(x₂) = 0), P(|x0| > 1.2) is 0.15-0.16
    # (z > 15, measured)
    outside = float(2 * jax.scipy.stats.norm.sf(1.2))
    assert_mean(np.abs(x[0]) > 1.2, outside, "P(|x0| > 1.2)", min_ess=400)
    assert_mean(x[0] ** 2, 1.0, "E[x0^2]", min_ess=400)
    assert_mean(x[0] * x[1], 0.9, "E[x0 x1]", min_ess=400)


@pytest.mark.parametrize("first", ["diverges", "small", "large"])
@pytest.mark.parametrize("ghost", ["diverges", "small", "large"])
@pytest.mark.parametrize("retry_passes", [True, False])
def test_delayed_rejection_accepts_the_retry_only_where_its_ghost_would_retry(
    first, ghost, retry_passes
):
    # scripted stages: the first is rejected with an acceptance of 0 (diverging), 0.005
    # or 0.5 (not retried); the retry (ε/2 from x0) ends at x0 + ε/2 or fails; the
    # ghost (−ε from the retry's end) has the acceptance 0, 0.005 or 0.5. H(x0) = 3,
    # H(x2) = 2: the bound e / (1 − α₁(x0)) > 1 runs the ghost wherever the retry ends
    x0, eps, n, n_retry = jnp.array([1.0]), 0.25, 7, 12
    alpha = {"diverges": 0.0, "small": 0.005, "large": 0.5}

    def attempt(start, size, steps, stage, use_tree, multinomial, take):
        moved = State(start.x + size, start.p, start.grad)
        at_x2 = (start.x[0] == x0[0] + eps / 2) & (size == -eps)
        accept_prob = jnp.where(stage == 0, alpha[first], 0.9)
        accept_prob = jnp.where((stage == 2) & at_x2, alpha[ghost], accept_prob)
        accepted = (stage == 1) & retry_passes & take
        info = trajectory.TransitionInfo(
            accept_prob=accept_prob,
            diverging=accept_prob == 0.0,
            energy=jnp.where(accepted, 2.0, 3.0),
            num_steps=steps,
            num_grad_evals=2 * steps,
            fixed_point_iters=jnp.int32(0),
            accepted=accepted,
        )
        return _select_state(accepted, moved, start), info

    s = State(x0, jnp.zeros(1), jnp.zeros(1))
    key = jax.random.PRNGKey(0)
    new, info = jax.jit(lambda: trajectory.retried(attempt, s, eps, n, n_retry, rng_key=key))()
    tried = first != "large"
    taken = tried and retry_passes and ghost != "large"
    assert float(new.x[0]) == (1.125 if taken else 1.0)
    assert float(info.energy) == (2.0 if taken else 3.0)
    assert bool(info.accepted) == taken
    # the first stage's divergence and acceptance are reported; every stage's steps count
    assert bool(info.diverging) == (first == "diverges")
    assert float(info.accept_prob) == float(np.float32(alpha[first]))
    assert int(info.num_steps) == n + tried * (n_retry + (n if retry_passes else 0))
    assert int(info.num_grad_evals) == 2 * int(info.num_steps)
    # no retry where it is turned off (0 steps)
    new, info = jax.jit(lambda: trajectory.retried(attempt, s, eps, n, 0, rng_key=key))()
    assert float(new.x[0]) == 1.0 and int(info.num_steps) == n


def test_delayed_rejection_skips_the_ghost_below_the_bound():
    # H(x2) − H(x0) = 30: u > π(x2) / (π(x0)(1 − α₁(x0))) for any u the ghost can't
    # change, so x2 is rejected without it (no ghost's steps)
    def attempt(start, size, steps, stage, use_tree, multinomial, take):
        info = trajectory.TransitionInfo(
            accept_prob=jnp.float32(0.0),
            diverging=stage == 0,
            energy=jnp.where(stage == 1, 33.0, 3.0),
            num_steps=steps,
            num_grad_evals=steps,
            fixed_point_iters=jnp.int32(0),
            accepted=stage == 1,
        )
        return State(start.x + size, start.p, start.grad), info

    s = State(jnp.array([1.0]), jnp.zeros(1), jnp.zeros(1))
    key = jax.random.PRNGKey(0)
    new, info = jax.jit(lambda: trajectory.retried(attempt, s, 0.25, 7, 12, rng_key=key))()
    assert float(new.x[0]) == 1.0 and float(info.energy) == 3.0
    assert int(info.num_steps) == 7 + 12 and not bool(info.accepted)


def _select_state(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)
