"""Semi-separable Hamiltonian Monte Carlo (S3HMC) for NumPyro."""

from numpyro_s3hmc.compare import compare_samplers, plot_comparison
from numpyro_s3hmc.integrators import (
    IntegratorState,
    alba,
    implicit_alba,
    one_gradient_splitting,
)
from numpyro_s3hmc.kernel import S3HMC, S3HMCState, s3hmc_step
from numpyro_s3hmc.metrics import SemiSeparableMetric
from numpyro_s3hmc.partition import SitePartition, partition_sites

__version__ = "0.1.0"

__all__ = [
    "S3HMC",
    "S3HMCState",
    "IntegratorState",
    "SemiSeparableMetric",
    "SitePartition",
    "alba",
    "compare_samplers",
    "implicit_alba",
    "one_gradient_splitting",
    "partition_sites",
    "plot_comparison",
    "s3hmc_step",
]
