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
