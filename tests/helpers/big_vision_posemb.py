"""big_vision's 2-D sin-cos position embedding, copied verbatim as the oracle for
vlm_jax.models.vit.sincos_2d.

Source: google-research/big_vision, big_vision/models/vit.py, commit
0127fb6b337ee2a27bf4e54dea79cff176527356 (function `posemb_sincos_2d`). Do not "fix" it.
"""

import jax.numpy as jnp


def posemb_sincos_2d(h, w, width, temperature=10_000., dtype=jnp.float32):
  """Follows the MoCo v3 logic."""
  y, x = jnp.mgrid[:h, :w]

  assert width % 4 == 0, "Width must be mult of 4 for sincos posemb"
  omega = jnp.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature**omega)
  y = jnp.einsum("m,d->md", y.flatten(), omega)
  x = jnp.einsum("m,d->md", x.flatten(), omega)
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None, :, :]
