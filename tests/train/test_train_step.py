"""The jitted train step on a tiny real VLM: mesh invariance, accumulation, frozen groups, NaNs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers.train_standin import StandInVLM, tiny_config
from train import data as data_lib
from train import step as step_lib
from vlm_jax import sharding
from vlm_jax.config import Config, MeshConfig

# the machinery tests run on a stand-in (fast to compile); the real VLM variants are `slow`
MODELS = ["standin", pytest.param("real", marks=pytest.mark.slow)]


def make_model(kind, cfg):
    return StandInVLM(cfg.model) if kind == "standin" else None


def run_steps(cfg: Config, mesh_cfg: MeshConfig, devices, n: int, state=None, model=None):
    cfg.mesh = mesh_cfg
    mesh = sharding.make_mesh(mesh_cfg, devices)
    setup = step_lib.build_step(cfg, mesh, cfg.train.num_steps, model=model)
    state = setup.init(cfg.seed) if state is None else state
    gb = cfg.train.global_batch_size
    loader = data_lib.make_loader(cfg, "train", gb, 0, gb, 0, 1)
    out = []
    for _ in range(n):
        state, m = setup.train_step(state, sharding.global_batch(next(loader), mesh, gb))
        out.append(jax.device_get(m))
    return state, out, setup


def test_one_device_vs_eight_device_mesh_losses_match():
    cfg = tiny_config()
    _, m1, _ = run_steps(cfg, MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1], 5)
    state8, m8, setup = run_steps(cfg, MeshConfig(data=2, fsdp=2, tensor=2), jax.devices(), 5)
    specs = {s.spec for s in jax.tree.leaves(setup.state_shardings["params"])}
    assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
    # the model's logical constraints on activations are live: rows over data+fsdp, heads/mlp over tensor
    hlo = setup.train_step.lower(state8, setup.abstract_batch).as_text()
    constraints = [line for line in hlo.splitlines() if "sharding_constraint" in line]
    assert any('{"tensor"}' in c for c in constraints) and all('{"data", "fsdp"}' in c for c in constraints), constraints[:3]
    l1, l8 = np.array([m["loss"] for m in m1]), np.array([m["loss"] for m in m8])
    np.testing.assert_allclose(l8, l1, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", MODELS)
def test_four_micro_batches_equal_one_batch(kind):
    mesh_cfg = MeshConfig(data=2, fsdp=1, tensor=1)
    c1, c4 = tiny_config(grad_accum_steps=1), tiny_config(grad_accum_steps=4)
    s1, m1, _ = run_steps(c1, mesh_cfg, jax.devices()[:2], 1, model=make_model(kind, c1))
    s4, m4, _ = run_steps(c4, mesh_cfg, jax.devices()[:2], 1, model=make_model(kind, c4))
    np.testing.assert_allclose(m4[0]["loss"], m1[0]["loss"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(m4[0]["grad_norm"], m1[0]["grad_norm"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s4["params"]), jax.tree.leaves(s1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", MODELS)
def test_frozen_groups_bitwise_unchanged_and_stateless(kind):
    cfg = tiny_config(trainable=["projector"])
    model = make_model(kind, cfg)
    state, _, setup = run_steps(cfg, MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:2], 3, model=model)
    before = jax.device_get(setup.init(cfg.seed)["params"])
    after = jax.device_get(state["params"])
    for part in ("vision_tower", "decoder"):
        for a, b in zip(jax.tree.leaves(after[part]), jax.tree.leaves(before[part])):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["projector"]),
                                                          jax.tree.leaves(before["projector"])))
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]]
    assert opt_paths and not any("vision_tower" in p or "'decoder'" in p for p in opt_paths)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_non_finite_loss_keeps_last_good_state(policy):
    cfg = tiny_config(nan_policy=policy)
    state, _, setup = run_steps(cfg, MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1], 1,
                                model=StandInVLM(cfg.model))
    good = jax.device_get(state)
    flat = traverse_util.flatten_dict(state["params"], sep="/")
    key = next(k for k in flat if k.startswith("projector"))
    flat[key] = flat[key].at[(0,) * flat[key].ndim].set(jnp.nan)
    bad = {**state, "params": traverse_util.unflatten_dict(flat, sep="/")}
    gb = cfg.train.global_batch_size
    batch = sharding.global_batch(next(data_lib.make_loader(cfg, "train", gb, 0, gb, 0, 1)), setup.abstract_batch["tokens"].sharding.mesh, gb)
    new, m = setup.train_step(bad, batch)
    assert not bool(m["finite"])
    assert int(new["step"]) == (good["step"] + 1 if policy == "skip" else good["step"])
    new_flat = traverse_util.flatten_dict(jax.device_get(new["params"]), sep="/")
    good_flat = traverse_util.flatten_dict(good["params"], sep="/")
    for k, v in good_flat.items():
        if k != key:
            assert np.asarray(new_flat[k]).tobytes() == np.asarray(v).tobytes()


@pytest.mark.slow
def test_lora_stage_trains_only_adapters_and_projector():
    cfg = tiny_config(trainable=["lora", "projector"])
    cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.dropout = 4, 8.0, 0.1
    state, m, setup = run_steps(cfg, MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:2], 2)
    before = traverse_util.flatten_dict(jax.device_get(setup.init(cfg.seed)["params"]), sep="/")
    after = traverse_util.flatten_dict(jax.device_get(state["params"]), sep="/")
    lora = [k for k in after if "lora_" in k]
    assert lora and any(not np.array_equal(after[k], before[k]) for k in lora if "lora_b" in k)
    for k, v in after.items():
        if "lora_" not in k and not k.startswith("projector"):
            assert np.asarray(v).tobytes() == np.asarray(before[k]).tobytes(), k
    assert np.isfinite(m[-1]["loss"])


@pytest.mark.parametrize("per_row", [24, 3])  # 24: every row fits; 3: fake rows supervise ~half their 24 tokens
def test_lm_head_on_supervised_positions_only_matches_full_logits(per_row):
    mesh_cfg = MeshConfig(data=2, fsdp=1, tensor=1)
    full, sparse = tiny_config(), tiny_config(loss_tokens_per_row=per_row)
    s_full, m_full, _ = run_steps(full, mesh_cfg, jax.devices()[:2], 2, model=StandInVLM(full.model))
    s_sp, m_sp, _ = run_steps(sparse, mesh_cfg, jax.devices()[:2], 2, model=StandInVLM(sparse.model))
    for a, b in zip(m_sp, m_full):
        for k in ("supervised_tokens", "token_accuracy"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        for k in ("loss", "grad_norm"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(s_sp["params"]), jax.tree.leaves(s_full["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
