import gc
import os

import pytest

import numpyro

# two host devices for chain_method="parallel"; must happen before JAX starts
numpyro.set_host_device_count(2)

import jax  # noqa: E402

jax.config.update("jax_platform_name", "cpu")
if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: one process compiles
    hundreds of samplers, and XLA's CPU compiler crashed (SIGSEGV) late in a run
    that kept them all."""
    yield
    jax.clear_caches()
    gc.collect()
