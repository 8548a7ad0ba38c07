"""The transition keeps O(1) copies of the parameters, whatever the trajectory length."""

import functools

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist

from numpyro_s3hmc import S3HMC

# The sampler's machinery in the model's own coordinates: coordinates="auto", the default,
# would non-centre the prior-dominated groups here (bypassing the semi-separable metric
# these tests check) and add a pilot run and its compilation to every test; it is tested
# in test_coupled_metric.py, test_exact.py, test_bnn*.py, test_discrete_and_missing.py
# and by the examples and the demo.
S3HMC = functools.partial(S3HMC, coordinates="centred")


def funnel():
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([2000]))


def step_buffers(num_steps):
    """XLA's temporary and output bytes of one compiled transition."""
    kernel = S3HMC(funnel, num_steps=num_steps, max_num_steps=num_steps)
    state = kernel.init(jax.random.PRNGKey(0), 10, None, (), {})
    compiled = jax.jit(lambda s: kernel.sample(s, (), {})).lower(state).compile()
    memory = compiled.memory_analysis()
    return memory.temp_size_in_bytes + memory.output_size_in_bytes


def test_no_per_step_copies():
    short, long = step_buffers(4), step_buffers(4000)
    # a trajectory of 4,000 steps that stored each step's 2,000 parameters would
    # need 32 MB more; the while loop carries one state
    assert long == short
    assert short < 2000 * 4 * 200  # a few hundred parameter-sized buffers at most
