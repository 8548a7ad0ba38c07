"""Reversible, volume-preserving integrators for the semi-separable Hamiltonian.

All three integrate :math:`H = U(θ, η) + \\tfrac12\\log|G_θ(η)| + \\tfrac12
r_θ^\\top G_θ(η)^{-1} r_θ + \\tfrac12 r_η^\\top G_η^{-1} r_η` (see
:mod:`numpyro_s3hmc.metrics`), and each step is a palindromic composition of
symplectic maps, so it is reversible and preserves volume by construction.

- :func:`alba`: the alternating block-wise leapfrog of Zhang & Sutton (2014,
  Algorithm 1 of Cobb et al. 2019) in η = log τ. One step is
  H_θ-leapfrog(ε/2) · H_η-leapfrog(ε) · H_θ-leapfrog(ε/2); with η fixed H_θ is
  separable in (θ, r_θ), and with θ, r_θ fixed H_η has the constant kinetic
  energy ½ r_ηᵀ G_η⁻¹ r_η and the potential V_η = U + ½log|G_θ| + ½ r_θᵀG_θ⁻¹r_θ,
  so both blocks use the explicit leapfrog. 2·param_steps + hyper_steps
  gradients of U per step.
- :func:`implicit_alba`: the same, with the hyperparameter block integrated in
  τ = exp(η) as the paper writes it. There G_τ = c/τ² depends on τ, H_τ is not
  separable, and the block needs the implicit generalised leapfrog (Girolami &
  Calderhead 2011, eqs. 16-18). A fixed point that does not converge, or τ ≤ 0,
  makes the step fail (the kernel counts a divergence and rejects).
- :func:`one_gradient_splitting`: H = V + K_θ + K_η with V = U + ½log|G_θ(η)|,
  K_θ = ½ r_θᵀG_θ(η)⁻¹r_θ, K_η = ½ r_ηᵀG_η⁻¹r_η; each flow is exact, and the
  Strang composition V(ε/2) K_θ(ε/2) K_η(ε) K_θ(ε/2) V(ε/2) needs one gradient
  of U per step (docs/design.md §5.3).

Each is a factory returning ``(step, grads_per_step)``: the step has the
signature ``step(state, step_size) -> (state, StepInfo)`` (a negative step size
integrates backward in time, as a no-U-turn tree needs), and ``grads_per_step`` is
the number of gradients of U one step evaluates.

References
----------
Zhang, Y. and Sutton, C. (2014). Semi-separable Hamiltonian Monte Carlo for
inference in Bayesian hierarchical models. NeurIPS.
Cobb, A. D. et al. (2019). Semi-separable Hamiltonian Monte Carlo for inference
in Bayesian neural networks. NeurIPS BDL workshop.
Girolami, M. and Calderhead, B. (2011). Riemann manifold Langevin and
Hamiltonian Monte Carlo methods. JRSS B.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from numpyro_s3hmc._types import Array
from numpyro_s3hmc.metrics import (
    SemiSeparableMetric,
    coupling_energy_grad,
    param_solver,
)

PotentialAndGrad = Callable[[Array, Array], tuple[Array, Array, Array]]
"""(θ, η) -> (U, ∂U/∂θ, ∂U/∂η): one gradient evaluation of the potential."""


class IntegratorState(NamedTuple):
    theta: Array  # shape=(n_params,)
    eta: Array  # shape=(n_hyper,), log-precisions
    r_theta: Array  # shape=(n_params,)
    r_eta: Array  # shape=(n_hyper,)
    potential_energy: Array  # shape=(), U(θ, η)
    grad_theta: Array  # shape=(n_params,), ∂U/∂θ
    grad_eta: Array  # shape=(n_hyper,), ∂U/∂η


class StepInfo(NamedTuple):
    ok: Array  # shape=(), dtype=bool; False: non-finite, τ ≤ 0 or no fixed point
    fixed_point_iters: Array  # shape=(), dtype=int32; most iterations of a solve


INTEGRATORS = ("alba", "implicit_alba", "splitting")


def _evaluate(potential_and_grad: PotentialAndGrad, state: IntegratorState):
    u, g_theta, g_eta = potential_and_grad(state.theta, state.eta)
    return state._replace(potential_energy=u, grad_theta=g_theta, grad_eta=g_eta)


def _param_leapfrog(potential_and_grad, solve, state, h):
    """One leapfrog step of H_θ (η, r_η fixed); ``solve`` applies G_θ(η)⁻¹."""
    r_theta = state.r_theta - 0.5 * h * state.grad_theta  # r_θ(n+1/2)
    theta = state.theta + h * solve(r_theta)  # θ(n+1)
    state = _evaluate(potential_and_grad, state._replace(theta=theta))
    r_theta = r_theta - 0.5 * h * state.grad_theta  # r_θ(n+1)
    return state._replace(r_theta=r_theta)


def _hyper_force(metric, state):
    """∂V_η/∂η with V_η = U + ½log|G_θ(η)| + ½ r_θᵀG_θ(η)⁻¹r_θ."""
    return state.grad_eta + coupling_energy_grad(metric, state.eta, state.r_theta)[0]


def _hyper_leapfrog(potential_and_grad, metric, state, h):
    """One leapfrog step of H_η (θ, r_θ fixed) in η coordinates."""
    r_eta = state.r_eta - 0.5 * h * _hyper_force(metric, state)  # r_η(n+1/2)
    eta = state.eta + h * r_eta / metric.hyper_precision  # η(n+1)
    state = _evaluate(potential_and_grad, state._replace(eta=eta))
    r_eta = r_eta - 0.5 * h * _hyper_force(metric, state)  # r_η(n+1)
    return state._replace(r_eta=r_eta)


def _param_block(potential_and_grad, metric, state, h, inner_steps):
    solve = param_solver(metric, state.eta)  # G_θ is constant while η is fixed
    for _ in range(inner_steps):
        state = _param_leapfrog(potential_and_grad, solve, state, h / inner_steps)
    return state


def _finite(state):
    return jnp.isfinite(state.potential_energy) & jnp.all(jnp.isfinite(state.r_eta))


def _sandwich(param_block, hyper_step, param_steps, hyper_steps):
    """The ALBA step: θ block for ε/2, ``hyper_steps`` η steps, θ block for ε/2."""

    def step(state: IntegratorState, step_size):
        state = param_block(state, 0.5 * step_size, param_steps)
        ok, iters = jnp.bool_(True), jnp.int32(0)
        for _ in range(hyper_steps):
            state, ok_h, it_h = hyper_step(state, step_size / hyper_steps)
            ok, iters = ok & ok_h, jnp.maximum(iters, it_h)
        state = param_block(state, 0.5 * step_size, param_steps)
        return state, StepInfo(ok & _finite(state), iters)

    return step, 2 * param_steps + hyper_steps


def _theta_only(param_block, param_steps):
    """No hyperparameters: the θ block alone, a plain leapfrog with G_θ fixed."""

    def step(state: IntegratorState, step_size):
        state = param_block(state, step_size, param_steps)
        return state, StepInfo(_finite(state), jnp.int32(0))

    return step, param_steps


def alba(
    potential_and_grad: PotentialAndGrad,
    metric: SemiSeparableMetric,
    *,
    param_steps: int = 1,
    hyper_steps: int = 1,
) -> tuple[Callable, int]:
    """ALBA in log-precision coordinates (docs/design.md §5.1).

    Parameters
    ----------
    potential_and_grad : (θ, η) -> (U, ∂U/∂θ, ∂U/∂η).
    metric : the semi-separable metric.
    param_steps, hyper_steps : inner leapfrog steps of each block per step.
    """

    param_block = partial(_param_block, potential_and_grad, metric)

    if metric.hyper_precision.shape[0] == 0:
        return _theta_only(param_block, param_steps)

    def hyper_step(state, h):
        return _hyper_leapfrog(potential_and_grad, metric, state, h), jnp.bool_(True), jnp.int32(0)

    return _sandwich(param_block, hyper_step, param_steps, hyper_steps)


def _solve_fixed_point(fn, x0, tol, max_iter):
    """Iterate x <- fn(x) until the largest relative change is below tol."""

    def cond(carry):
        _, change, i = carry
        return (i < max_iter) & (change > tol)  # NaN stops the loop

    def body(carry):
        x, _, i = carry
        x_new = fn(x)
        change = jnp.max(jnp.abs(x_new - x) / (1.0 + jnp.abs(x_new)))
        return x_new, change, i + 1

    init = (x0, jnp.asarray(jnp.inf, x0.dtype), jnp.int32(0))
    x, change, iters = jax.lax.while_loop(cond, body, init)
    return x, change <= tol, iters


def implicit_alba(
    potential_and_grad: PotentialAndGrad,
    metric: SemiSeparableMetric,
    *,
    param_steps: int = 1,
    hyper_steps: int = 1,
    fixed_point_tol: float | None = None,
    fixed_point_max_iter: int = 100,
) -> tuple[Callable, int]:
    """ALBA with the hyperparameter block in τ coordinates (docs/design.md §5.2).

    In τ the block's Hamiltonian is H_τ = V_η(log τ) + ½ Σ τ² r_τ² / c with
    r_τ = r_η / τ (the cotangent lift), i.e. the metric G_τ = c/τ² of the paper's
    eq. (6). One generalised leapfrog step of size h:

    - r_τ(½) = r_τ − h/2 ∂H/∂τ(τ, r_τ(½))            (implicit in r_τ(½))
    - τ' = τ + h/2 [∂H/∂r_τ(τ, r_τ(½)) + ∂H/∂r_τ(τ', r_τ(½))]   (implicit in τ')
    - r_τ' = r_τ(½) − h/2 ∂H/∂τ(τ', r_τ(½))            (explicit)

    Both implicit equations are solved by fixed-point iteration to
    ``fixed_point_tol`` (relative), at most ``fixed_point_max_iter`` times.
    """
    n_hyper = metric.hyper_precision.shape[0]
    c = metric.hyper_precision

    def hyper_step(state, h, tol):
        tau = jnp.exp(state.eta)
        r_tau = state.r_eta / tau
        dv_dtau = _hyper_force(metric, state) / tau  # ∂V/∂τ, fixed in the 1st solve
        r_half, ok_r, it_r = _solve_fixed_point(
            lambda r: r_tau - 0.5 * h * (dv_dtau + tau * r**2 / c), r_tau, tol, max_it
        )
        tau_new, ok_t, it_t = _solve_fixed_point(
            lambda t: tau + 0.5 * h * (tau**2 + t**2) * r_half / c, tau, tol, max_it
        )
        positive = jnp.all(tau_new > 0)
        eta = jnp.log(jnp.where(tau_new > 0, tau_new, jnp.nan))
        state = _evaluate(potential_and_grad, state._replace(eta=eta))
        dv_dtau = _hyper_force(metric, state) / tau_new
        r_tau_new = r_half - 0.5 * h * (dv_dtau + tau_new * r_half**2 / c)
        state = state._replace(r_eta=tau_new * r_tau_new)
        return state, ok_r & ok_t & positive, jnp.maximum(it_r, it_t)

    max_it = fixed_point_max_iter

    param_block = partial(_param_block, potential_and_grad, metric)

    if n_hyper == 0:
        return _theta_only(param_block, param_steps)

    def tolerant_step(state, h):
        tol = fixed_point_tol
        if tol is None:
            tol = 1e-6 if state.eta.dtype == jnp.float32 else 1e-10
        return hyper_step(state, h, tol)

    return _sandwich(param_block, tolerant_step, param_steps, hyper_steps)


def one_gradient_splitting(
    potential_and_grad: PotentialAndGrad, metric: SemiSeparableMetric
) -> tuple[Callable, int]:
    """The Strang splitting V(ε/2) K_θ(ε/2) K_η(ε) K_θ(ε/2) V(ε/2) (docs/design.md §5.3).

    The flow of K_θ = ½ r_θᵀG_θ(η)⁻¹r_θ moves θ by t G_θ(η)⁻¹ r_θ and r_η by
    −t ∂K_θ/∂η, both constant while η and r_θ stay fixed; the flow of K_η moves
    η by t G_η⁻¹ r_η; the flow of V kicks both momenta. One gradient of U a step.
    """
    c = metric.hyper_precision

    def step(state: IntegratorState, step_size):
        h = 0.5 * step_size
        # V(h) then K_θ(h), both at the same η: one factorisation of G_θ serves both
        r_theta = state.r_theta - h * state.grad_theta  # r_θ after V(h)
        d_eta, velocity = coupling_energy_grad(metric, state.eta, r_theta)
        r_eta = state.r_eta - h * (state.grad_eta + d_eta)  # r_η after V(h) K_θ(h)
        theta = state.theta + h * velocity  # θ after K_θ(h)
        eta = state.eta + step_size * r_eta / c  # η after K_η(ε)
        # K_θ(h) at the new η, the one gradient of U, then V(h)
        d_eta, velocity = coupling_energy_grad(metric, eta, r_theta)
        theta = theta + h * velocity
        u, grad_theta, grad_eta = potential_and_grad(theta, eta)
        state = IntegratorState(
            theta=theta,
            eta=eta,
            r_theta=r_theta - h * grad_theta,
            r_eta=r_eta - h * (grad_eta + d_eta),
            potential_energy=u,
            grad_theta=grad_theta,
            grad_eta=grad_eta,
        )
        return state, StepInfo(_finite(state), jnp.int32(0))

    return step, 1


def build_integrator(
    name: str,
    potential_and_grad: PotentialAndGrad,
    metric: SemiSeparableMetric,
    *,
    param_steps: int = 1,
    hyper_steps: int = 1,
    fixed_point_tol: float | None = None,
    fixed_point_max_iter: int = 100,
) -> tuple[Callable, int]:
    """``(step, grads_per_step)`` of the integrator called ``name`` (one of
    :data:`INTEGRATORS`)."""
    if name == "alba":
        return alba(
            potential_and_grad,
            metric,
            param_steps=param_steps,
            hyper_steps=hyper_steps,
        )
    if name == "implicit_alba":
        return implicit_alba(
            potential_and_grad,
            metric,
            param_steps=param_steps,
            hyper_steps=hyper_steps,
            fixed_point_tol=fixed_point_tol,
            fixed_point_max_iter=fixed_point_max_iter,
        )
    if name == "splitting":
        return one_gradient_splitting(potential_and_grad, metric)
    raise ValueError(f"integrator must be one of {INTEGRATORS}, got {name!r}.")
