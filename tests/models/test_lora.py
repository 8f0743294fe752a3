import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.config import DecoderConfig, LoRAConfig, ModelConfig, VisionConfig
from vlm_jax.models.lora import merged
from vlm_jax.models.vlm import VLM


def tiny(lora_rank=0, scan=True):
    return ModelConfig(
        vision=VisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4),
        decoder=DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2),
        image_token_id=63,
        scan_layers=scan,
        lora=LoRAConfig(rank=lora_rank, alpha=16.0),
    )


def test_adapters_sit_beside_base_kernels():
    base = VLM(tiny()).init_params(jax.random.key(0))
    adapted = VLM(tiny(lora_rank=4)).init_params(jax.random.key(0))
    layers = adapted["decoder"]["layers"]
    for name in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]:
        assert layers[name]["lora_a"].shape[-1] == 4 and layers[name]["lora_b"].shape[-2] == 4
        assert layers[name]["kernel"].shape == base["decoder"]["layers"][name]["kernel"].shape
        assert not np.any(np.asarray(layers[name]["lora_b"])), "lora_b starts at zero (PEFT init)"
    strip = lambda t: jax.tree.map(lambda x: x.shape, merged(t, LoRAConfig(rank=4)))  # noqa: E731
    assert strip(adapted) == jax.tree.map(lambda x: x.shape, base)


def test_merged_weights_give_the_adapter_models_logits():
    cfg = tiny(lora_rank=4)
    model = VLM(cfg)
    params = model.init_params(jax.random.key(1))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(rng.normal(size=x.shape) * 0.2, x.dtype) if "lora_b" in str(p) else x, params
    )
    batch = model.dummy_batch(2)
    batch["images"] = jnp.asarray(rng.integers(0, 255, batch["images"].shape), jnp.uint8)
    with_adapters = model.apply({"params": params}, batch)
    plain = VLM(dataclasses.replace(cfg, lora=LoRAConfig(rank=0)))
    merged_logits = plain.apply({"params": merged(params, cfg.lora)}, batch)
    no_delta = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if "lora_b" in str(p) else x, params)
    base_logits = plain.apply({"params": merged(no_delta, cfg.lora)}, batch)
    assert float(jnp.abs(with_adapters - base_logits).max()) > 1e-3, "adapters must change the output"
    np.testing.assert_allclose(np.asarray(with_adapters), np.asarray(merged_logits), atol=1e-5, rtol=0)
