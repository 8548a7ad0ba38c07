"""The semi-separable metric of S3HMC and the energies built on it.

Symbols (docs/design.md §3–4): θ the parameters, η = log h the log-hyperparameters
(NumPyro's unconstrained coordinates for positive sites), r_θ and r_η their momenta.
The metric is block diagonal, :math:`G(θ, η) = \\mathrm{diag}(G_θ(η), G_η)`, with

- :math:`G_θ(η)` diagonal: the prior precision of each parameter element at the
  current η (read from the model's own ``Normal`` sites), plus a constant
  diagonal term (the adapted "data precision");
- :math:`G_η = \\mathrm{diag}(c)` constant, :math:`c_l` the Fisher information in
  η_l of the children h_l scales (:math:`c_l = Q_l/2 + α_l - 1` for a Gamma
  precision, the paper's eq. 6 pulled back to η = log τ).

With :math:`r_θ \\sim N(0, G_θ(η))` and :math:`r_η \\sim N(0, G_η)` the Hamiltonian is

.. math::

    H = U(θ, η) + \\tfrac12 \\log|G_θ(η)| + \\tfrac12 r_θ^\\top G_θ(η)^{-1} r_θ
        + \\tfrac12 r_η^\\top G_η^{-1} r_η .

The kinetic terms use the *inverse* metric: the paper's eq. (5) writes
:math:`G` instead, which gives a biased sampler (docs/design.md §7).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from numpyro_s3hmc._types import Array, PRNGKey


class SemiSeparableMetric(NamedTuple):
    """The two blocks of the metric.

    param_precision: η -> diagonal of G_θ(η), shape (n_params,), positive.
    hyper_precision: diagonal of G_η, shape (n_hyper,), positive constants c_l.
    """

    param_precision: Callable[[Array], Array]
    hyper_precision: Array


def sample_momentum(
    metric: SemiSeparableMetric, rng_key: PRNGKey, eta: Array, num_params: int
) -> tuple[Array, Array]:
    """Draw r_θ ~ N(0, G_θ(η)) and r_η ~ N(0, G_η)."""
    key_theta, key_eta = jax.random.split(rng_key)
    dtype = eta.dtype
    g_theta = metric.param_precision(eta)
    r_theta = jnp.sqrt(g_theta) * jax.random.normal(key_theta, (num_params,), dtype)
    r_eta = jnp.sqrt(metric.hyper_precision) * jax.random.normal(key_eta, jnp.shape(eta), dtype)
    return r_theta, r_eta


def coupling_energy(metric: SemiSeparableMetric, eta: Array, r_theta: Array) -> Array:
    """The terms of H that tie the blocks together.

    .. math:: \\tfrac12 \\log|G_θ(η)| + \\tfrac12 r_θ^\\top G_θ(η)^{-1} r_θ

    Energy moves between θ and η through these terms (docs/design.md §4).
    """
    g_theta = metric.param_precision(eta)
    return 0.5 * jnp.sum(jnp.log(g_theta)) + 0.5 * jnp.sum(r_theta**2 / g_theta)


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
