"""Faults S3HMC must survive: what the user sees, and draws that stay exact.

Each test states what a user gets from the fault (a warning, a divergence count
or a clear error) and, where the posterior is proper, checks the draws against
the exact answer by MCSE z-scores (as tests/test_exact.py does).
"""

import functools

import exact_answers
import numpy as np
import pytest
from exact_answers import assert_mean
from scipy import integrate, special, stats

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC, IntegratorState
from numpyro_s3hmc.integrators import build_integrator
from numpyro_s3hmc.metrics import sample_momentum
from numpyro_s3hmc.partition import split_z

# The sampler's machinery in the model's own coordinates: coordinates="auto", the default,
# would non-centre the prior-dominated groups here (bypassing the semi-separable metric
# these tests check) and add a pilot run and its compilation to every test; it is tested
# in test_coupled_metric.py, test_exact.py, test_bnn*.py, test_discrete_and_missing.py
# and by the examples and the demo.
S3HMC = functools.partial(S3HMC, coordinates="centred")

Y = np.array([0.3, 1.9, 2.4, 0.8, 1.5, 3.1, 1.2, 2.2, 0.9, 1.7])


def sample(kernel, *args, num_warmup=300, num_samples=1500, seed=0, extra_fields=()):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("fixed_point_iters", *extra_fields))
    return mcmc.get_samples(), mcmc.get_extra_fields()


def normal_gamma_model(a0, b0, m0=1.0, k0=0.5, cut=None, bad=np.nan):
    """τ ~ Gamma(a0, b0), μ ~ N(m0, 1/√(k0 τ)), y ~ N(μ, 1/√τ); ``bad`` where μ > cut."""

    def model(y):
        tau = numpyro.sample("tau", dist.Gamma(a0, b0))
        mu = numpyro.sample("mu", dist.Normal(m0, 1.0 / jnp.sqrt(k0 * tau)))
        loc = mu if cut is None else jnp.where(mu > cut, bad, mu)
        numpyro.sample("y", dist.Normal(loc, 1.0 / jnp.sqrt(tau)), obs=y)

    return model


def normal_gamma_posterior(y, a0, b0):
    return exact_answers.normal_gamma_posterior(y, a0, b0, m0=1.0, k0=0.5)


def check_normal_gamma(s, y, a0, b0):
    mn, kn, an, bn = normal_gamma_posterior(y, a0, b0)
    assert_mean(np.log(s["tau"]), special.digamma(an) - np.log(bn), "E[log tau]")
    assert_mean(s["mu"], mn, "E[mu]")
    assert_mean((s["mu"] - mn) ** 2, bn / (kn * (an - 1)), "Var[mu]")


# --- a likelihood that is NaN or inf in part of the space ---------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_likelihood_region(bad):
    # the likelihood is NaN (or its log-density -inf) for μ beyond a cut two posterior
    # standard deviations out: the region has zero density, the target is the
    # posterior truncated to μ ≤ cut, and every trajectory that enters the region is
    # a divergence. (A cut inside the bulk is survived too, but HMC against a hard
    # wall shrinks its step size and mixes too slowly for a quick test.)
    mn, kn, an, bn = normal_gamma_posterior(Y, 2.0, 2.0)
    t = stats.t(df=2 * an, loc=mn, scale=np.sqrt(bn / (an * kn)))
    cut = mn + 2.0 * t.std()
    mass = t.cdf(cut)
    e_mu = integrate.quad(lambda m: m * t.pdf(m), -np.inf, cut)[0] / mass
    # τ | μ ~ Gamma(an + ½, bn + kn (μ − mn)²/2)
    e_tau = (
        integrate.quad(
            lambda m: t.pdf(m) * (an + 0.5) / (bn + kn * (m - mn) ** 2 / 2), -np.inf, cut
        )[0]
        / mass
    )
    model = normal_gamma_model(2.0, 2.0, cut=cut, bad=bad)
    s, f = sample(S3HMC(model), jnp.asarray(Y), extra_fields=("metric_state.use_tree",))
    assert int(f["diverging"].sum()) > 0  # what the user sees: a divergence count
    assert np.all(np.isfinite(s["mu"])) and np.all(s["mu"] <= cut)
    diverging = np.asarray(f["diverging"])
    accept = np.asarray(f["accept_prob"])[diverging]
    if bool(f["metric_state.use_tree"][-1]):
        # the tree keeps the draw it had before the divergent leaf; its statistic
        # is the mean over its leaves
        assert np.all((accept >= 0.0) & (accept <= 1.0))
    else:  # the static length rejects a divergent trajectory's end point
        assert np.all(accept == 0.0)
    assert_mean(s["mu"], e_mu, "E[mu | mu <= cut]")
    assert_mean(s["tau"], e_tau, "E[tau | mu <= cut]")


# --- extreme hyperpriors ------------------------------------------------------


@pytest.mark.parametrize(
    "a0, b0, count_observations",
    [(0.01, 1.0, False), (1000.0, 1000.0, True), (2.0, 1e-4, True)],
    ids=["tiny-alpha", "huge-alpha", "tiny-beta"],
)
def test_extreme_hyperpriors(a0, b0, count_observations):
    model = normal_gamma_model(a0, b0)
    kernel = S3HMC(model, count_observations=count_observations)
    if a0 < 0.5:
        # Q = 1 (μ alone, observations not counted): c = Q/2 + α − 1 < 0, and the
        # user is told which fallback the metric takes
        with pytest.warns(UserWarning, match=r"falls back to Q/2 \+ alpha"):
            s, f = sample(kernel, jnp.asarray(Y))
        assert float(kernel.partition.hyper_sites["tau"].c) == pytest.approx(0.5 + a0)
    else:
        s, f = sample(kernel, jnp.asarray(Y))
    assert int(f["diverging"].sum()) == 0
    check_normal_gamma(s, Y, a0, b0)


# --- data with large magnitudes -----------------------------------------------


def test_large_magnitude_data():
    # y around 1e4 with spread 1e4: τ ≈ 3e-7, far from the init (|log τ| ≤ 2)
    y = 1e4 * Y + 1e4
    s, f = sample(S3HMC(normal_gamma_model(2.0, 2.0)), jnp.asarray(y, jnp.float32))
    assert int(f["diverging"].sum()) == 0
    check_normal_gamma(s, y, 2.0, 2.0)


# --- exp overflow of a log-precision, and a step size far too large ------------

X_OBS = np.array([0.4, -1.1, 0.7, 1.6, -0.2, -0.9])
LOG_TAU_SD = 30.0


def user_log_precision(x):
    # a log-precision sampled by the user and exponentiated: exp overflows for
    # log_tau > 88 in float32, which the vague prior does not rule out
    log_tau = numpyro.sample("log_tau", dist.Normal(0.0, LOG_TAU_SD))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(-0.5 * log_tau)), obs=x)


def log_tau_posterior_mean():
    grid = np.linspace(-15.0, 15.0, 20001)
    log_lik = stats.norm.logpdf(X_OBS, 0, np.exp(-0.5 * grid[:, None])).sum(-1)
    log_post = stats.norm.logpdf(grid, 0, LOG_TAU_SD) + log_lik
    w = np.exp(log_post - log_post.max())
    return float((grid * w).sum() / w.sum())


@pytest.mark.parametrize("model", ["gamma-site", "user-log-precision"])
def test_exp_overflow_is_a_divergence(model):
    # a fixed step of 50 in log τ: exp(η) or exp(-log_tau/2) overflows to inf
    # within a trajectory; each such transition is a divergence, rejected, and the
    # chain stays on finite values
    if model == "gamma-site":
        fn, args = normal_gamma_model(2.0, 2.0), (jnp.asarray(Y),)
    else:
        fn, args = user_log_precision, (jnp.asarray(X_OBS),)
    kernel = S3HMC(fn, step_size=50.0, adapt_step_size=False, adapt_metric=False, num_steps=4)
    s, f = sample(kernel, *args, num_warmup=0, num_samples=30)
    diverging = np.asarray(f["diverging"])
    assert diverging.sum() >= 25
    for v in s.values():
        assert np.all(np.isfinite(np.asarray(v)))
    assert np.all(np.asarray(f["accept_prob"])[diverging] == 0.0)
    assert np.all(np.isfinite(np.asarray(f["potential_energy"])))


def test_huge_initial_step_size_and_overflow_recovers():
    # start with a step size 1e3 times too large on the vague log-precision model:
    # the first trajectories overflow and are counted as warmup divergences; the
    # step-size search and dual averaging bring it back, and the draws match the
    # posterior (1-D quadrature)
    mcmc = MCMC(
        S3HMC(user_log_precision, step_size=1e3),
        num_warmup=300,
        num_samples=1500,
        progress_bar=False,
    )
    mcmc.warmup(jax.random.PRNGKey(0), jnp.asarray(X_OBS), collect_warmup=True)
    assert int(mcmc.get_extra_fields()["diverging"].sum()) > 0
    mcmc.run(jax.random.PRNGKey(1), jnp.asarray(X_OBS))
    f = mcmc.get_extra_fields()
    assert float(f["adapt_state.step_size"][-1]) < 5.0
    assert int(f["diverging"].sum()) == 0
    assert_mean(mcmc.get_samples()["log_tau"], log_tau_posterior_mean(), "E[log_tau]")


def replay_implicit_steps(kernel, last, first, z, fields, rows):
    """Replay post-warmup transitions ``rows`` of an ``implicit_alba`` run.

    ``z`` are the run's unconstrained draws, ``fields`` its REPLAY_FIELDS, ``last``
    its last state and ``first`` its post-warmup state, where draw 0 starts (needed
    only if ``0 in rows``). Each transition is rerun from the state before it with
    the kernel's own metric, step size, momentum key and number of steps (its first
    stage's: a rejected trajectory may be retried, and the recorded count includes the
    retry's), up to the first step that fails. Returns, per transition, whether every
    step before the last succeeded, whether the last one did, and the last step's
    τ-block log-step
    Δ = h (r_η − h/2 ∂V/∂η) / c: how far one ALBA step from the same point moves log τ.
    Δ decides the implicit τ block: its fixed-point equations for r_τ(½) and for τ'
    are quadratics with discriminants 1 + 2Δ and 1 − 2Δ, so both have a real root
    only while |Δ| ≤ ½ (README: h·r_η/(2c) < (√2 − 1)/2, which is Δ < ½).
    """
    potential_and_grad, metric, _ = kernel._hamiltonian_parts(
        (Y,), {}, last.metric_state, last.potential_energy.dtype
    )
    implicit = jax.jit(build_integrator("implicit_alba", potential_and_grad, metric)[0])
    explicit = jax.jit(build_integrator("alba", potential_and_grad, metric)[0])
    step_size = last.adapt_state.step_size  # fixed after warmup

    @jax.jit
    def begin(z, potential_energy, z_grad, rng_key):
        theta, eta = split_z(z, kernel.partition)
        grad_theta, grad_eta = split_z(z_grad, kernel.partition)
        _, key_steps, key_transition, _ = jax.random.split(rng_key, 4)  # as S3HMC._sample_chain
        key_momentum, _ = jax.random.split(key_transition)  # as s3hmc_step
        r_theta, r_eta = sample_momentum(metric, key_momentum, eta, theta.size)
        steps = kernel._trajectory_steps(key_steps, step_size, last.metric_state.trajectory_length)
        state = IntegratorState(theta, eta, r_theta, r_eta, potential_energy, grad_theta, grad_eta)
        return state, steps

    def before(i):  # the state transition i starts from
        if i == 0:
            return first.z, first.potential_energy, first.z_grad, first.rng_key
        pick = lambda v: jax.tree.map(lambda a: a[i - 1], v)  # noqa: E731
        names = ("potential_energy", "z_grad", "rng_key")
        return (pick(z),) + tuple(pick(fields[name]) for name in names)

    earlier_ok, last_ok, log_step = [], [], []
    for i in rows:
        (state, steps), ok = begin(*before(i)), []
        for _ in range(int(steps)):
            probe, _ = explicit(state, step_size)
            delta = float(jnp.max(jnp.abs(probe.eta - state.eta)))
            state, info = implicit(state, step_size)
            ok.append(bool(info.ok))
            if not ok[-1]:
                break
        earlier_ok.append(all(ok[:-1]))
        last_ok.append(ok[-1])
        log_step.append(delta)
    return np.array(earlier_ok, bool), np.array(last_ok, bool), np.array(log_step)


REPLAY_FIELDS = ("potential_energy", "z_grad", "rng_key", "num_integrator_steps")


@pytest.mark.parametrize("integrator", ["splitting", "implicit_alba"])
def test_huge_initial_step_size_normal_gamma(integrator):
    # a step size 1e4 too large at the start has no lasting effect: the step size
    # adapts down, the draws are exact, and the only divergences are the integrator's
    # own (none for splitting; for implicit_alba its τ-space fixed point, README)
    kernel = S3HMC(normal_gamma_model(2.0, 2.0), integrator=integrator, step_size=1e4)
    if integrator == "splitting":
        s, f = sample(kernel, Y)
        assert float(f["adapt_state.step_size"][-1]) < 5.0
        assert int(f["diverging"].sum()) == 0
        check_normal_gamma(s, Y, 2.0, 2.0)
        return
    mcmc = MCMC(  # draws left unconstrained, as the kernel's state holds them
        kernel, num_warmup=300, num_samples=1500, progress_bar=False, postprocess_fn=lambda z: z
    )
    mcmc.run(jax.random.PRNGKey(0), Y, extra_fields=REPLAY_FIELDS)
    z, f = mcmc.get_samples(), mcmc.get_extra_fields()
    step_size = float(f["adapt_state.step_size"][-1])
    assert step_size < 5.0
    # and below the scale where a τ momentum of one standard deviation (√c) already
    # takes the τ block past |Δ| = ½ (see replay_implicit_steps): there a third of
    # the trajectories would fail at their first step
    c = float(kernel.partition.hyper_sites["tau"].c)
    assert step_size < 0.5 * np.sqrt(c)
    # How many transitions diverge follows the adapted step size steeply: 0 to 20 %
    # over seeds 0-11 (over 10 % from a start at 1 too), so what is checked is what
    # each divergence is: rerun, it is a trajectory whose last step failed (not a
    # finished one with a large energy error), and that step's τ block was at the
    # bound |Δ| = ½ with no real root, or so near it that the fixed point, whose
    # contraction factor is q = 1 − √(1 − 2|Δ|), can stop at its cap of 100
    # iterations (q¹⁰⁰ > tol): the README's "fixed point that does not converge".
    rows = np.flatnonzero(np.asarray(f["diverging"]))
    first = None
    if rows.size and rows[0] == 0:  # draw 0 starts where only a warmup ends
        warm = MCMC(kernel, num_warmup=300, num_samples=1500, progress_bar=False)
        warm.warmup(jax.random.PRNGKey(0), Y)
        first = warm.post_warmup_state
    last = mcmc.last_state
    earlier_ok, last_ok, log_step = replay_implicit_steps(kernel, last, first, z, f, rows)
    assert np.all(earlier_ok) and not np.any(last_ok)
    tol = 1e-6 if z["tau"].dtype == np.float32 else 1e-10  # implicit_alba's default
    bound = 0.5 - 0.5 * (1.0 - tol ** (1 / 100)) ** 2  # 0.4917 in float32
    assert np.all(log_step >= bound), f"divergences off the bound: |Δ| = {np.sort(log_step)[:5]}"
    check_normal_gamma({"tau": np.exp(z["tau"]), "mu": z["mu"]}, Y, 2.0, 2.0)


# --- a fixed point that never converges (implicit integrator) -----------------


def test_fixed_point_never_converges():
    kernel = S3HMC(
        normal_gamma_model(2.0, 2.0),
        integrator="implicit_alba",
        step_size=0.5,
        adapt_step_size=False,  # the step-size search would shrink it until it converges
        integrator_kwargs={"fixed_point_max_iter": 1},
    )
    s, f = sample(kernel, jnp.asarray(Y), num_warmup=0, num_samples=20)
    # the user sees every transition diverge, and the solver at its cap
    assert bool(np.all(f["diverging"]))
    np.testing.assert_array_equal(np.asarray(f["fixed_point_iters"]), 1)
    np.testing.assert_array_equal(s["mu"], s["mu"][0])  # every proposal rejected
    assert np.all(np.isfinite(s["mu"]))


def test_overflowing_gradients_leave_the_metric_finite():
    # a float32 chain far out: (∂U/∂θ)² overflows and the window's spread is inf − inf;
    # the elements whose constants came out non-finite keep the last window's (they
    # were NaN, and every later transition diverged)
    from numpyro_s3hmc.adaptation import metric_adapter

    governed = np.array([True, False])
    init_fn, update_fn = metric_adapter(60, governed, np.ones(1, np.float32))
    z = jnp.zeros(3, jnp.float32)
    wa_state, metric_state = init_fn(z, jax.random.PRNGKey(0), 0.1, jnp.zeros(2), 1.0)
    prior = jnp.ones(2, jnp.float32)
    key = jax.random.PRNGKey(1)
    overflowed = False
    for i in range(60):
        key, sub = jax.random.split(key)
        z = jax.random.normal(sub, (3,), jnp.float32)
        huge = i % 7 == 3  # now and then a gradient whose square is inf in float32
        grad = jnp.full(2, 1e30 if huge else 1.0, jnp.float32)
        wa_state, metric_state = update_fn(i, 0.8, z, grad, prior, wa_state, metric_state)
        overflowed |= bool(~jnp.isfinite(metric_state.fisher_mean).all())
    assert overflowed  # the case under test happened
    assert jnp.isfinite(metric_state.data_precision).all()
    assert jnp.isfinite(metric_state.prior_scale).all() and (metric_state.prior_scale > 0).all()
