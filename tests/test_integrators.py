"""Deterministic checks of the integrators on a funnel with a likelihood, in float64."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from numpyro_s3hmc.integrators import INTEGRATORS, IntegratorState, build_integrator
from numpyro_s3hmc.metrics import SemiSeparableMetric, coupling_energy, hamiltonian

N_PARAMS, ALPHA, BETA = 4, 2.0, 1.0
Y = np.array([0.5, -1.0, 2.0, 0.3])


def potential(theta, eta):
    """U in η = log τ: x ~ N(0, 1/τ) prior, y ~ N(x, 1/2) data, τ ~ Gamma(α, β)."""
    tau = jnp.exp(eta[0])
    prior = 0.5 * tau * jnp.sum(theta**2) - 0.5 * N_PARAMS * eta[0]
    lik = jnp.sum((Y - theta) ** 2)
    hyper = -(ALPHA * eta[0] - BETA * tau)  # Gamma log-density + log-Jacobian
    return prior + lik + hyper


def potential_and_grad(theta, eta):
    u, (g_theta, g_eta) = jax.value_and_grad(potential, argnums=(0, 1))(theta, eta)
    return u, g_theta, g_eta


def make_metric(data_precision=0.7):
    c = jnp.array([N_PARAMS / 2 + ALPHA - 1])
    return SemiSeparableMetric(lambda eta: jnp.exp(eta[0]) * jnp.ones(N_PARAMS) + data_precision, c)


def initial_state():
    theta = jnp.array([0.3, -0.2, 1.1, 0.4])
    eta = jnp.array([0.2])
    u, g_theta, g_eta = potential_and_grad(theta, eta)
    return IntegratorState(
        theta, eta, jnp.array([0.5, -1.0, 0.2, 0.8]), jnp.array([1.3]), u, g_theta, g_eta
    )


def run(name, state, step_size, num_steps, **kwargs):
    step, _ = build_integrator(name, potential_and_grad, make_metric(), **kwargs)
    step = jax.jit(step)  # one compile instead of dispatching every operation eagerly
    ok = True
    for _ in range(num_steps):
        state, info = step(state, step_size)
        ok = ok & bool(info.ok)
    return state, ok


def energy(state):
    return hamiltonian(make_metric(), state.potential_energy, state.eta, state.r_theta, state.r_eta)


TOL = {"fixed_point_tol": 1e-14}


@pytest.mark.parametrize("name", INTEGRATORS)
def test_reversible(name):
    with jax.enable_x64(True):
        start = initial_state()
        end, ok = run(name, start, 0.1, 20, **(TOL if name == "implicit_alba" else {}))
        assert ok
        back = end._replace(r_theta=-end.r_theta, r_eta=-end.r_eta)
        back, ok = run(name, back, 0.1, 20, **(TOL if name == "implicit_alba" else {}))
        assert ok
        np.testing.assert_allclose(back.theta, start.theta, atol=1e-11)
        np.testing.assert_allclose(back.eta, start.eta, atol=1e-11)
        np.testing.assert_allclose(-back.r_theta, start.r_theta, atol=1e-11)
        np.testing.assert_allclose(-back.r_eta, start.r_eta, atol=1e-11)
        # and the trajectory really moved
        assert np.abs(np.asarray(end.theta - start.theta)).max() > 0.1


@pytest.mark.parametrize("name", INTEGRATORS)
def test_volume_preserving(name):
    with jax.enable_x64(True):
        start = initial_state()
        kwargs = TOL if name == "implicit_alba" else {}
        step, _ = build_integrator(name, potential_and_grad, make_metric(), **kwargs)

        def flat_step(x):
            theta, eta = x[:N_PARAMS], x[N_PARAMS : N_PARAMS + 1]
            r_theta, r_eta = x[N_PARAMS + 1 : 2 * N_PARAMS + 1], x[2 * N_PARAMS + 1 :]
            u, g_theta, g_eta = potential_and_grad(theta, eta)
            s = IntegratorState(theta, eta, r_theta, r_eta, u, g_theta, g_eta)
            for _ in range(3):
                s, _ = step(s, 0.2)
            return jnp.concatenate([s.theta, s.eta, s.r_theta, s.r_eta])

        x0 = jnp.concatenate([start.theta, start.eta, start.r_theta, start.r_eta])
        jac = jax.jacfwd(flat_step)(x0)
        assert abs(np.linalg.det(np.asarray(jac)) - 1.0) < 1e-9
        assert np.abs(np.asarray(jac) - np.eye(x0.size)).max() > 0.05  # not the identity


@pytest.mark.parametrize("name", INTEGRATORS)
def test_energy_error_is_second_order(name):
    with jax.enable_x64(True):
        start = initial_state()
        h0 = float(energy(start))
        errors = []
        for k in (1, 2, 4):
            end, ok = run(name, start, 0.1 / k, 10 * k, **(TOL if name == "implicit_alba" else {}))
            assert ok
            errors.append(abs(float(energy(end)) - h0))
        ratios = np.array(errors[:-1]) / np.array(errors[1:])
        # halving ε divides the error at a fixed time by 4 for a second-order method
        np.testing.assert_allclose(ratios, 4.0, rtol=0.2)


def test_logdet_cancels_prior_normaliser():
    """½ log|G_θ(η)| cancels the −½ Σ log τ of the Normal prior inside U (docs/design.md §4)."""
    with jax.enable_x64(True):
        metric = make_metric(data_precision=0.0)
        theta = jnp.zeros(N_PARAMS)
        etas = jnp.linspace(-2.0, 2.0, 7)

        def f(e):
            eta = jnp.array([e])
            return potential(theta, eta) + coupling_energy(metric, eta, jnp.zeros(N_PARAMS))

        # what remains is the Gamma prior in η, −α η + β e^η, plus a constant:
        # no −½ Σ log τ term survives
        remainder = jnp.array([f(e) for e in etas]) - (-ALPHA * etas + BETA * jnp.exp(etas))
        np.testing.assert_allclose(remainder - remainder[0], 0.0, atol=1e-12)


def test_implicit_fixed_point_failure_is_reported():
    start = initial_state()
    step, _ = build_integrator(
        "implicit_alba", potential_and_grad, make_metric(), fixed_point_max_iter=1
    )
    _, info = step(start, 0.5)
    assert not bool(info.ok)
    assert int(info.fixed_point_iters) == 1


def test_implicit_rejects_negative_tau():
    # a huge step drives τ' = τ + h/2 (τ² + τ'²) r/c negative or to no fixed point
    start = initial_state()._replace(r_eta=jnp.array([-40.0]))
    step, _ = build_integrator("implicit_alba", potential_and_grad, make_metric())
    _, info = step(start, 3.0)
    assert not bool(info.ok)
