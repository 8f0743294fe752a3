"""The data part of the config check: every `data.*` value the pipeline could not use, as one
ConfigError naming the key. The loader runs it at construction; vlm_jax/config_check.py runs it
with the rest of the config before anything is built."""

from __future__ import annotations

from typing import Optional, Sequence

from vlm_jax.config import ConfigError, DataConfig, DataSourceConfig
from vlm_jax.data import images, interleaved, templates
from vlm_jax.data.examples import TOO_LONG_MODES
from vlm_jax.image_layout import ImageLayout, crops_for_tiling


def _one_of(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")


def check_sources(sources: Sequence[DataSourceConfig], key: str) -> None:
    """Mixture weights: none at all (concatenate) or a positive one for every source."""
    weights = [s.weight for s in sources]
    if any(w is not None for w in weights) and any(w is None or not w > 0 for w in weights):
        raise ConfigError(f"{key}: give every source a positive weight (or none at all), got {weights}")


def check_data(d: DataConfig, layout: Optional[ImageLayout] = None) -> None:
    """`layout`: the model's image layout, when known; an explicit tiling must give its K crops, and
    seq_len must hold one image (its N placeholders) and a token to learn."""
    try:
        templates.get_template(d.template)
    except KeyError:
        raise ConfigError(f"data.template: unknown {d.template!r} (known: {', '.join(templates.names())})") from None
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len: must be >= 2 (a token and the next one to learn), got {d.seq_len}")
    if d.max_images < 0:
        raise ConfigError(f"data.max_images: must be >= 0 (0 = text only), got {d.max_images}")
    if layout is not None and d.max_images > 0 and d.seq_len < layout.tokens_per_image + 2:
        raise ConfigError(f"data.seq_len: {d.seq_len} cannot hold an image ({layout.tokens_per_image} placeholders) "
                          "with text; raise it, or set data.max_images=0 for text-only data")
    _one_of("data.too_long", d.too_long, TOO_LONG_MODES)
    _one_of("data.interleaved_loss", d.interleaved_loss, interleaved.LOSS_MODES)
    _one_of("data.image_budget_order", d.image_budget_order, interleaved.BUDGET_ORDERS)
    _one_of("data.image.aspect", d.image.aspect, images.ASPECTS)
    if d.image.tiling != "auto":
        try:
            k = crops_for_tiling(d.image.tiling)
        except ValueError as e:
            raise ConfigError(f"data.image.tiling: {e}") from None
        if layout is not None and k != layout.crops_per_image:
            raise ConfigError(f"data.image.tiling: {d.image.tiling!r} gives {k} crops per image but the model's "
                              f"projector takes {layout.crops_per_image}")
    for key, value in (("data.image.max_pixels", d.image.max_pixels), ("data.max_consecutive_skips",
                                                                      d.max_consecutive_skips)):
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if d.cache_examples < 0:
        raise ConfigError(f"data.cache_examples: must be >= 0 (0 = off), got {d.cache_examples}")
    check_sources(d.sources, "data.sources")
    check_sources(d.eval_sources, "data.eval_sources")
