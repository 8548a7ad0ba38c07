from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
ArrayTree = Any
