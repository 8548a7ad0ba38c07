import gc
import os
import shutil
import tempfile

import pytest

import numpyro

# two host devices for chain_method="parallel"; must happen before JAX starts
numpyro.set_host_device_count(2)

import jax  # noqa: E402

jax.config.update("jax_platform_name", "cpu")
if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)

# One persistent XLA cache per test run, shared by its worker processes (they inherit
# the variable) and deleted at the end: the module fixture below drops every compiled
# program, after which each module compiled NumPyro's eager initialisation again (about
# 10 s on the oldest stack); from the cache it loads them. A fresh folder per run keeps
# the run's time that of a first run.
_CACHE_VARIABLE = "NUMPYRO_S3HMC_TEST_XLA_CACHE"
_OWN_CACHE = _CACHE_VARIABLE not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="numpyro-s3hmc-xla-")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_sessionfinish(session):
    if _OWN_CACHE:
        shutil.rmtree(os.environ[_CACHE_VARIABLE], ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: one process compiles
    hundreds of samplers, and XLA's CPU compiler crashed (SIGSEGV) late in a run
    that kept them all."""
    yield
    jax.clear_caches()
    gc.collect()
