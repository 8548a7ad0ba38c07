"""Semi-separable Hamiltonian Monte Carlo (S3HMC) for NumPyro.

The kernel and its parts load with the package; :func:`compare_samplers` and
:func:`plot_comparison` (ArviZ, pandas, matplotlib) and :func:`from_numpyro` (ArviZ) load
on first use.
"""

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

_LAZY = {
    "compare_samplers": "numpyro_s3hmc.compare",
    "plot_comparison": "numpyro_s3hmc.compare",
    "from_numpyro": "numpyro_s3hmc._arviz",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "S3HMC",
    "S3HMCState",
    "IntegratorState",
    "SemiSeparableMetric",
    "SitePartition",
    "alba",
    "compare_samplers",
    "from_numpyro",
    "implicit_alba",
    "one_gradient_splitting",
    "partition_sites",
    "plot_comparison",
    "s3hmc_step",
]
