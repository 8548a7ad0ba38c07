import os

import numpyro

# two host devices for chain_method="parallel"; must happen before JAX starts
numpyro.set_host_device_count(2)

import jax  # noqa: E402

jax.config.update("jax_platform_name", "cpu")
if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)
