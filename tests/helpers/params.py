"""Random parameter values for a model, drawn on the host from its abstract shapes (compiling the
model's initialiser would dominate a small test's time)."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, seed: int, std: float = 0.1) -> dict:
    """Normal(0, std) for every leaf, norm scales around 1, in each leaf's dtype."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        x = rng.standard_normal(a.shape) * std
        return jnp.asarray(x + 1.0 if getattr(path[-1], "key", "") == "scale" else x, a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, model.abstract_params())
