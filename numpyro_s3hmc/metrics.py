"""The semi-separable metric of S3HMC and the energies built on it.

Symbols (docs/design.md §3–4): θ the parameters, η = log h the log-hyperparameters
(NumPyro's unconstrained coordinates for positive sites), r_θ and r_η their momenta.
The metric is block diagonal, :math:`G(θ, η) = \\mathrm{diag}(G_θ(η), G_η)`, with

- :math:`G_θ(η) = A^\\top W(η) A + D`, the Fisher information of the model's
  ``Normal`` prior factors plus a constant diagonal D (the adapted "data
  precision"). W(η) is diagonal: the prior precision of each parameter element at
  the current η, read from the model. A = I − B, where row i of B holds
  ∂m_i/∂θ, the coefficients of the parameters that enter element i's prior mean
  linearly (its *location parents*: μ in θ_j ~ N(μ, τ), β in θ_j ~ N(x_jᵀβ, τ)).
  Without location parents A = I and G_θ(η) is diagonal (docs/design.md §3.1);
- :math:`G_η = \\mathrm{diag}(c)` constant, :math:`c_l` the Fisher information in
  η_l of the children h_l scales (:math:`c_l = Q_l/2 + α_l - 1` for a Gamma
  precision, the paper's eq. 6 pulled back to η = log τ).

With :math:`r_θ \\sim N(0, G_θ(η))` and :math:`r_η \\sim N(0, G_η)` the Hamiltonian is

.. math::

    H = U(θ, η) + \\tfrac12 \\log|G_θ(η)| + \\tfrac12 r_θ^\\top G_θ(η)^{-1} r_θ
        + \\tfrac12 r_η^\\top G_η^{-1} r_η .

The kinetic terms use the *inverse* metric: the paper's eq. (5) writes
:math:`G` instead, which gives a biased sampler (docs/design.md §7).

With location parents, the parameters split into the parents L (m of them, few)
and the rest C. G_θ's C×C block is diagonal, Δ = W_C + D_C, so solves, the
log-determinant and momentum draws cost O(n + n_B m + m³) by the Schur complement
S = G_LL − G_LC Δ⁻¹ G_CL (m × m), never a dense n × n matrix.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp

from numpyro_s3hmc._types import Array, PRNGKey


class LocationCoupling(NamedTuple):
    """The static structure B of G_θ = (I − B)ᵀ W (I − B) + D (flat θ indices).

    parents: indices of the location parents L, shape (m,).
    rows: indices of the elements outside L whose mean has location parents, shape (k,).
    b_rows: ∂m/∂θ_L of those elements, shape (k, m).
    b_parents: ∂m/∂θ_L of the parents' own means (nested groups), shape (m, m).
    """

    parents: np.ndarray
    rows: np.ndarray
    b_rows: np.ndarray
    b_parents: np.ndarray


class SemiSeparableMetric(NamedTuple):
    """The two blocks of the metric.

    param_precision: η -> W(η), the prior-factor precisions, shape (n_params,),
        non-negative (plus D, when ``data_precision`` is None, as a single diagonal).
    hyper_precision: diagonal of G_η, shape (n_hyper,), positive constants c_l.
    data_precision: D, shape (n_params,), a function of η giving it, or None (0).
    coupling: the location-parent structure, or None (G_θ diagonal).
    """

    param_precision: Callable[[Array], Array]
    hyper_precision: Array
    data_precision: Callable[[Array], Array] | Array | None = None
    coupling: LocationCoupling | None = None


def _data(metric: SemiSeparableMetric, eta: Array, like: Array) -> Array:
    d = metric.data_precision
    if d is None:
        return jnp.zeros_like(like)
    return d(eta) if callable(d) else d


def _diagonal(metric: SemiSeparableMetric, eta: Array, w: Array) -> Array:
    return w if metric.data_precision is None else w + _data(metric, eta, w)


def _schur(metric: SemiSeparableMetric, eta: Array, w: Array, d: Array | None = None):
    """Δ (diagonal of G_θ outside L, all n entries), and the Cholesky factor of S."""
    cp = metric.coupling
    d = _data(metric, eta, w) if d is None else d
    delta = w + d
    w_rows = w[cp.rows]
    # the children's share: W − W²/Δ = W D/Δ, stable where D = 0
    child = jnp.where(delta[cp.rows] > 0, w_rows * d[cp.rows] / delta[cp.rows], 0.0)
    a_parents = jnp.eye(cp.parents.size, dtype=w.dtype) - cp.b_parents
    s = (cp.b_rows.T * child) @ cp.b_rows
    s = s + (a_parents.T * w[cp.parents]) @ a_parents + jnp.diag(d[cp.parents])
    return delta, jnp.linalg.cholesky(s)


def _factorise(metric: SemiSeparableMetric, eta: Array) -> tuple[Array, Callable[[Array], Array]]:
    """log|G_θ(η)| and r -> G_θ(η)⁻¹ r, with G_θ(η) factorised once."""
    w = metric.param_precision(eta)
    if metric.coupling is None:
        g = _diagonal(metric, eta, w)
        return jnp.sum(jnp.log(g)), lambda r: r / g
    cp = metric.coupling
    delta, chol = _schur(metric, eta, w)
    in_c = jnp.ones_like(w, dtype=bool).at[cp.parents].set(False)
    logdet = jnp.sum(jnp.where(in_c, jnp.log(jnp.where(in_c, delta, 1.0)), 0.0))
    logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    wr = w[cp.rows] / delta[cp.rows]
    delta_c = jnp.where(in_c, delta, 1.0)

    def solve(r):
        # G = [[Δ, E], [Eᵀ, F]], E = −W_C B_C: x_L = S⁻¹(r_L − EᵀΔ⁻¹r_C), x_C = Δ⁻¹(r_C − E x_L)
        rhs = r[cp.parents] + cp.b_rows.T @ (wr * r[cp.rows])
        x_parents = jax.scipy.linalg.cho_solve((chol, True), rhs)
        x = (r / delta_c).at[cp.rows].add(wr * (cp.b_rows @ x_parents))
        return x.at[cp.parents].set(x_parents)

    return logdet, solve


def param_logdet_and_solve(
    metric: SemiSeparableMetric, eta: Array, r_theta: Array
) -> tuple[Array, Array]:
    """log|G_θ(η)| and G_θ(η)⁻¹ r_θ."""
    logdet, solve = _factorise(metric, eta)
    return logdet, solve(r_theta)


def param_diagonal(metric: SemiSeparableMetric, eta: Array) -> Array:
    """The diagonal of G_θ(η)."""
    w = metric.param_precision(eta)
    d = _data(metric, eta, w)
    cp = metric.coupling
    if cp is None:
        return w + d
    a_parents = jnp.eye(cp.parents.size, dtype=w.dtype) - cp.b_parents
    own = (a_parents**2).T @ w[cp.parents] + (cp.b_rows**2).T @ w[cp.rows]
    return (w + d).at[cp.parents].set(own + d[cp.parents])


def sample_momentum(
    metric: SemiSeparableMetric, rng_key: PRNGKey, eta: Array, num_params: int
) -> tuple[Array, Array]:
    """Draw r_θ ~ N(0, G_θ(η)) and r_η ~ N(0, G_η)."""
    key_theta, key_eta = jax.random.split(rng_key)
    dtype = eta.dtype
    w = metric.param_precision(eta)
    if metric.coupling is None:
        noise = jax.random.normal(key_theta, (num_params,), dtype)
        r_theta = jnp.sqrt(_diagonal(metric, eta, w)) * noise
    else:
        # Aᵀ W^½ ξ₁ + D^½ ξ₂ has covariance AᵀWA + D
        cp = metric.coupling
        key_w, key_d = jax.random.split(key_theta)
        v = jnp.sqrt(w) * jax.random.normal(key_w, (num_params,), dtype)
        r_theta = v.at[cp.parents].add(-(cp.b_rows.T @ v[cp.rows] + cp.b_parents.T @ v[cp.parents]))
        if metric.data_precision is not None:
            noise = jax.random.normal(key_d, (num_params,), dtype)
            r_theta = r_theta + jnp.sqrt(_data(metric, eta, w)) * noise
    r_eta = jnp.sqrt(metric.hyper_precision) * jax.random.normal(key_eta, jnp.shape(eta), dtype)
    return r_theta, r_eta


def coupling_energy(metric: SemiSeparableMetric, eta: Array, r_theta: Array) -> Array:
    """The terms of H that tie the blocks together.

    .. math:: \\tfrac12 \\log|G_θ(η)| + \\tfrac12 r_θ^\\top G_θ(η)^{-1} r_θ

    Energy moves between θ and η through these terms (docs/design.md §4).
    """
    logdet, x = param_logdet_and_solve(metric, eta, r_theta)
    return 0.5 * logdet + 0.5 * jnp.dot(r_theta, x)


def coupling_energy_grad(
    metric: SemiSeparableMetric, eta: Array, r_theta: Array
) -> tuple[Array, Array]:
    """∂/∂η of :func:`coupling_energy` at fixed r_θ, and G_θ(η)⁻¹ r_θ, in one pass."""
    if metric.coupling is None:
        # one linearisation of the diagonal: ∂/∂η is vjp(½/G − ½ r_θ²/G²)
        g, vjp = jax.vjp(lambda e: _diagonal(metric, e, metric.param_precision(e)), eta)
        (d_eta,) = vjp(0.5 / g - 0.5 * r_theta**2 / g**2)
        return d_eta, r_theta / g

    # ∂/∂η_k = ½ tr(G⁻¹ ∂_k G) − ½ xᵀ ∂_k G x with x = G⁻¹ r_θ and ∂_k G = Aᵀ ∂_k W A +
    # ∂_k D: one vjp of (W, D) with the cotangents ½(diag(A G⁻¹ Aᵀ) − (Ax)²) and
    # ½(diag(G⁻¹) − x²), the diagonals from the Schur complement. Differentiating
    # through the Cholesky factor gives the same numbers and a larger program (the
    # demo's centred sampler: 3.8 s to compile against 3.2 s; docs/design.md §3.1).
    cp = metric.coupling

    def precisions(e):
        w = metric.param_precision(e)
        return w, _data(metric, e, w)

    (w, d), vjp = jax.vjp(precisions, eta)
    delta, chol = _schur(metric, eta, w, d)
    s_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(cp.parents.size, dtype=w.dtype))
    a_parents = jnp.eye(cp.parents.size, dtype=w.dtype) - cp.b_parents
    w_rows, d_rows, delta_rows = w[cp.rows], d[cp.rows], delta[cp.rows]
    wr = w_rows / delta_rows
    x_parents = s_inv @ (r_theta[cp.parents] + cp.b_rows.T @ (wr * r_theta[cp.rows]))
    b_x = cp.b_rows @ x_parents
    x = (r_theta / delta).at[cp.rows].add(wr * b_x).at[cp.parents].set(x_parents)
    q = jnp.sum((cp.b_rows @ s_inv) * cp.b_rows, axis=1)  # B_i S⁻¹ B_iᵀ
    inverse = 1.0 / delta
    g_inv = inverse.at[cp.rows].add(wr**2 * q).at[cp.parents].set(jnp.diagonal(s_inv))
    a_g_inv_a = inverse.at[cp.rows].add(q * (d_rows / delta_rows) ** 2)
    a_g_inv_a = a_g_inv_a.at[cp.parents].set(jnp.diagonal(a_parents @ s_inv @ a_parents.T))
    a_x = x.at[cp.rows].add(-b_x).at[cp.parents].set(a_parents @ x_parents)
    (d_eta,) = vjp((0.5 * (a_g_inv_a - a_x**2), 0.5 * (g_inv - x**2)))
    return d_eta, x


def param_solver(metric: SemiSeparableMetric, eta: Array) -> Callable[[Array], Array]:
    """r -> G_θ(η)⁻¹ r at a fixed η, factorised once."""
    return _factorise(metric, eta)[1]


def hyper_kinetic_energy(metric: SemiSeparableMetric, r_eta: Array) -> Array:
    """:math:`\\tfrac12 r_η^\\top G_η^{-1} r_η` (constant metric)."""
    return 0.5 * jnp.sum(r_eta**2 / metric.hyper_precision)


def hamiltonian(
    metric: SemiSeparableMetric,
    potential_energy: Array,
    eta: Array,
    r_theta: Array,
    r_eta: Array,
) -> Array:
    """The full H, up to the constant ½ log|G_η| + D/2 log 2π."""
    return (
        potential_energy
        + coupling_energy(metric, eta, r_theta)
        + hyper_kinetic_energy(metric, r_eta)
    )


def hamiltonian_and_velocity(
    metric: SemiSeparableMetric,
    potential_energy: Array,
    eta: Array,
    r_theta: Array,
    r_eta: Array,
) -> tuple[Array, Array, Array]:
    """H as :func:`hamiltonian`, and the velocity ∂H/∂r = (G_θ(η)⁻¹ r_θ, G_η⁻¹ r_η)
    (a no-U-turn criterion's p♯), with G_θ(η) factorised once."""
    logdet, solve = _factorise(metric, eta)
    v_theta = solve(r_theta)
    h = (
        potential_energy
        + 0.5 * logdet
        + 0.5 * jnp.dot(r_theta, v_theta)
        + hyper_kinetic_energy(metric, r_eta)
    )
    return h, v_theta, r_eta / metric.hyper_precision
