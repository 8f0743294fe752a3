"""Tiny variants of the AlignGPT recipe stages train: data pipeline -> jitted train step; loss decreases,
the right groups move. Plus the recipes' published hyperparameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.data import IMAGE_TOKEN, data_config, loader_kwargs, make_records, write_images, write_json
from tests.helpers.params import random_params
from train import step as step_lib
from vlm_jax import sharding
from vlm_jax.config import Config, DecoderConfig, MeshConfig, ModelConfig, VisionConfig, load
from vlm_jax.data.pipeline import DataLoader

ROWS = 4


def tiny(stage: str) -> Config:
    """The recipe stage config (trainable groups, data mode) with a tiny model and a fast LR."""
    cfg = load(Config, f"configs/aligngpt/aligngpt_7b_{stage}.yaml", [])
    assert cfg.model.aligngpt.enabled
    cfg.model = ModelConfig(  # 16 px / 8 px patches: 4 tokens per image, as tests/data_helpers
        vision=VisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2),
        decoder=DecoderConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4),
        image_token_id=IMAGE_TOKEN, aligngpt=cfg.model.aligngpt)
    cfg.mesh = MeshConfig(data=1, fsdp=1, tensor=1)
    cfg.data.seq_len, cfg.data.max_images = 64, 3
    t = cfg.train
    t.global_batch_size, t.grad_accum_steps, t.num_steps, t.init_from = ROWS, 1, 8, None
    t.loss_vocab_chunk = 0  # one compiled cross-entropy, not the 7B recipe's chunked one
    t.optimizer.learning_rate, t.optimizer.warmup_steps, t.optimizer.schedule = 3e-3, 0, "constant"
    return cfg


def batch(cfg: Config, tmp_path) -> dict:
    recs = make_records(16, max_images=1, text_only_every=4)
    for i, r in enumerate(recs):
        r["similarity"] = i % 3  # levels 0..2 only
    write_images(str(tmp_path / "img"))
    dc = data_config(write_json(str(tmp_path / "d.json"), recs), str(tmp_path / "img"), seq_len=cfg.data.seq_len,
                     max_images=cfg.data.max_images, align_level_field=cfg.data.align_level_field, shuffle=False)
    loader = DataLoader(dc, aligngpt=cfg.model.aligngpt, **loader_kwargs(batch_size=ROWS, image_size=16))
    return next(loader)


def train(cfg: Config, b: dict, steps: int):
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = step_lib.build_step(cfg, mesh, cfg.train.num_steps)
    params = random_params(setup.model, 0, 0.02)  # no compiled initialiser: saves a compile
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": setup.tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    state = jax.device_put(state, setup.state_shardings)  # as the step returns it: one compile, not two
    before = jax.device_get(state["params"])
    gb = sharding.global_batch(b, mesh, ROWS)
    losses = []
    for _ in range(steps):
        state, m = setup.train_step(state, gb)
        losses.append(float(m["loss"]))
    return before, jax.device_get(state["params"]), losses


def changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_finetune_stage_trains_the_gate_and_keeps_the_indicators(tmp_path):
    cfg = tiny("finetune")
    assert cfg.train.trainable == ["projector", "decoder", "gated_weight_layer"] and not cfg.data.align_level_field
    b = batch(cfg, tmp_path)
    assert (b["align_level"] == cfg.model.aligngpt.num_indicators).sum() >= 2  # gated indicators in the batch
    before, after, losses = train(cfg, b, 6)
    assert losses[-1] < losses[0] - 0.05, losses
    assert changed(before["gated_weight_layer"], after["gated_weight_layer"])
    assert not changed(before["align_indicators"], after["align_indicators"])
    assert not changed(before["vision_tower"], after["vision_tower"])


@pytest.mark.slow
def test_pretrain_stage_trains_only_the_used_indicator_levels(tmp_path):
    cfg = tiny("pretrain")
    assert cfg.train.trainable == ["projector", "align_indicators"] and cfg.data.align_level_field == "similarity"
    b = batch(cfg, tmp_path)
    used = sorted(set(b["align_level"][b["align_level"] >= 0].tolist()))
    assert used and max(used) <= 2
    before, after, losses = train(cfg, b, 6)
    assert losses[-1] < losses[0], losses
    e0, e1 = before["align_indicators"]["indicator_embs"], after["align_indicators"]["indicator_embs"]
    moved = [i for i in range(8) if not np.array_equal(e0[i], e1[i])]
    assert moved == used
    assert not changed(before["gated_weight_layer"], after["gated_weight_layer"])
    assert not changed(before["decoder"], after["decoder"])


def test_recipe_configs_carry_the_published_hyperparameters():
    from train import stages
    from vlm_jax.config import load_yaml

    path = "configs/aligngpt/recipe_7b.yaml"
    pre, ft = (s.cfg for s in stages.load_recipe(path, load_yaml(path), [], need_files=False))
    for cfg in (pre, ft):
        assert cfg.model.aligngpt.enabled and cfg.model.aligngpt.num_indicators == 8
        assert cfg.model.aligngpt.gate_hidden == 256 and cfg.model.projector.type == "mlp2x_gelu"
        assert cfg.data.seq_len == 2048 and cfg.model.vision.select_layer == -2
        o = cfg.train.optimizer
        assert (o.schedule, o.warmup_ratio, o.weight_decay, cfg.train.num_epochs) == ("cosine", 0.03, 0.0, 1.0)
    assert (pre.data.template, pre.data.align_level_field, pre.data.image.aspect) == ("plain", "similarity", "crop")
    assert (pre.train.global_batch_size, pre.train.optimizer.learning_rate) == (256, 1e-3)
    assert (ft.data.template, ft.data.align_level_field, ft.data.image.aspect) == ("vicuna_v1", "", "pad")
    assert (ft.train.global_batch_size, ft.train.optimizer.learning_rate) == (128, 2e-5)
    assert ft.train.init_from == pre.run_dir
