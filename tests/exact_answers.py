"""Closed-form posteriors the sampler tests compare against."""

import numpy as np


def normal_gamma_posterior(y, a0, b0, m0, k0):
    """Parameters (m_n, k_n, a_n, b_n) of the Normal-Gamma posterior of
    tau ~ Gamma(a0, b0), mu ~ N(m0, 1/sqrt(k0 tau)), y_i ~ N(mu, 1/sqrt(tau))."""
    n, ybar = y.size, y.mean()
    kn = k0 + n
    mn = (k0 * m0 + n * ybar) / kn
    an = a0 + n / 2
    bn = b0 + 0.5 * np.sum((y - ybar) ** 2) + k0 * n * (ybar - m0) ** 2 / (2 * kn)
    return mn, kn, an, bn


Z_MAX = 4.0  # a correct sampler misses by more with probability < 1e-4 per check


def assert_mean(draws, truth, name, min_ess=150, z_max=Z_MAX):
    """The mean of ``draws`` (chains × draws, or one chain) is ``truth`` within
    ``z_max`` Monte Carlo standard errors, sd / sqrt(ESS) with ArviZ's bulk ESS."""
    from numpyro_s3hmc._arviz import arviz

    draws = np.asarray(draws, dtype=np.float64)
    draws = draws.reshape(1, -1) if draws.ndim == 1 else draws.reshape(draws.shape[0], -1)
    ess = float(arviz().ess(draws))
    mcse = draws.std(ddof=1) / np.sqrt(ess)
    z = abs(draws.mean() - truth) / mcse
    assert ess > min_ess, f"{name}: ESS {ess:.0f} too small to test"
    assert z < z_max, f"{name}: mean {draws.mean():.4g}, truth {truth:.4g}, z = {z:.2f}"
