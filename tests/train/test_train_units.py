"""Pure pieces of training: losses, schedules, optimizer groups, mesh arithmetic, shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax import losses, optim, sharding
from vlm_jax.config import ConfigError, MeshConfig, OptimizerConfig


def _inputs(seed=0, b=2, l=7, d=16, v=37):
    k = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(k[0], (b, l, d))
    w = jax.random.normal(k[1], (d, v)) * 0.5
    t = jax.random.randint(k[2], (b, l), 0, v).at[0, 0].set(-200)  # sentinel under the mask
    m = jax.random.bernoulli(k[3], 0.6, (b, l)).at[0, 0].set(False)
    return h, w, t, m


def test_cross_entropy_matches_optax_mean_over_supervised_tokens():
    h, w, t, m = _inputs()
    logits = h @ w
    s = losses.cross_entropy_sums(logits, t, m)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(m, t, 0))
    np.testing.assert_allclose(s.nll / s.count, (ref * m).sum() / m.sum(), rtol=1e-6)
    assert s.count == m.sum()


@pytest.mark.parametrize("chunk", [5, 64])
def test_vocab_chunked_loss_matches_full_values_and_grads(chunk):
    h, w, t, m = _inputs()

    def full(h, w):
        s = losses.cross_entropy_sums(h @ w, t, m)
        return losses.total_loss(s, s.count, z_loss=1e-3), s

    def chunked(h, w):
        s = losses.chunked_cross_entropy_sums(h, w, t, m, chunk)
        return losses.total_loss(s, s.count, z_loss=1e-3), s

    (lf, sf), gf = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(h, w)
    (lc, sc), gc = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(h, w)
    np.testing.assert_allclose(lc, lf, rtol=1e-6)
    np.testing.assert_allclose(sc.correct, sf.correct)
    for a, b in zip(gc, gf):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_warmup_cosine_schedule_and_group_lrs():
    cfg = OptimizerConfig(learning_rate=2e-4, group_lr={"projector": 2e-5}, warmup_ratio=0.1)
    scheds = optim.group_schedules(cfg, ["projector", "lora"], 100)
    lora = scheds["lora"]
    assert float(lora(0)) == 0.0
    np.testing.assert_allclose(float(lora(5)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lora(10)), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lora(55)), 1e-4, rtol=1e-5)  # half-way through the cosine
    assert float(lora(100)) < 1e-9
    np.testing.assert_allclose(float(scheds["projector"](10)), 2e-5, rtol=1e-6)


def test_param_groups_labels_and_no_state_for_frozen():
    params = {
        "vision_tower": {"w": jnp.ones((2, 3))},
        "projector": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
        "decoder": {"q": {"kernel": jnp.ones((4, 4)), "lora_a": jnp.ones((4, 2)), "lora_b": jnp.zeros((2, 4))}},
    }
    labels = optim.param_labels(params, ["projector", "lora"])
    assert labels["vision_tower"]["w"] == "frozen" and labels["decoder"]["q"]["kernel"] == "frozen"
    assert labels["decoder"]["q"]["lora_a"] == "lora" and labels["projector"]["bias"] == "projector"
    tx, _ = optim.make_optimizer(OptimizerConfig(), ["projector", "lora"], 10)
    state = tx.init(params)
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert n_state == 2 * (3 * 4 + 4 + 4 * 2 + 2 * 4)  # mu and nu of trainable leaves only
    assert optim.decay_mask(params)["projector"]["bias"] is False
    with pytest.raises(ConfigError):
        optim.make_optimizer(OptimizerConfig(), ["visual"], 10)


def test_mesh_shape_fill_and_errors():
    assert sharding.mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert sharding.mesh_shape(MeshConfig(data=1, fsdp=-1), 8) == (1, 8, 1)
    with pytest.raises(ConfigError, match="does not match"):
        sharding.mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ConfigError, match="cannot be split"):
        sharding.mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ConfigError, match="at most one"):
        sharding.mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)


def test_logical_rules_to_shardings_and_uneven_dims_replicated():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = sharding.logical_rules(MeshConfig())
    specs = {"a": jax.sharding.PartitionSpec("embed", "mlp"), "b": jax.sharding.PartitionSpec("vocab", "embed")}
    shapes = {"a": jax.ShapeDtypeStruct((8, 6), jnp.float32), "b": jax.ShapeDtypeStruct((5, 4), jnp.float32)}
    sh = sharding.shardings_from_logical(specs, shapes, mesh, rules)
    assert sh["a"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert sh["b"].spec == jax.sharding.PartitionSpec(None, "fsdp")  # vocab 5 not divisible by tensor=2
    with pytest.raises(ConfigError, match="unknown mesh axis"):
        sharding.logical_rules(MeshConfig(rules={"embed": "model"}))


def test_global_batch_from_process_local_rows():
    mesh = sharding.make_mesh(MeshConfig(data=4, fsdp=2, tensor=1))
    assert sharding.process_rows(sharding.batch_sharding(mesh), 16) == (0, 16)
    local = {"tokens": np.arange(32, dtype=np.int32).reshape(16, 2)}
    g = sharding.global_batch(local, mesh, 16)
    assert g["tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(g["tokens"]), local["tokens"])


def test_llava15_recipe_configs_load_and_validate():
    import glob
    import os

    from train import stages
    from vlm_jax import config_check
    from vlm_jax.config import Config, load, load_yaml

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "llava15")
    for path in sorted(glob.glob(os.path.join(root, "*.yaml"))):
        raw = load_yaml(path)
        if stages.is_recipe(raw):
            loaded = stages.load_recipe(path, raw, [], need_files=False)
            assert [s.name for s in loaded] == ["pretrain", "finetune"]
            assert loaded[1].cfg.train.init_from == loaded[0].cfg.run_dir
            continue
        cfg = load(Config, path, [])
        config_check.check(cfg, need_files=False)
        if os.path.basename(path).startswith("base"):
            continue
        assert config_check.check_devices(cfg, 8, 1) == (1, 8, 1)
        t = cfg.train
        if "pretrain" in path:
            assert t.trainable == ["projector"] and t.optimizer.learning_rate == 1e-3 and t.global_batch_size == 256
            assert cfg.data.template == "plain"
        elif "lora" in path:
            assert set(t.trainable) == {"lora", "projector"} and cfg.model.lora.rank == 128
            assert cfg.model.lora.alpha == 256 and t.optimizer.learning_rate == 2e-4
            assert t.optimizer.group_lr == {"projector": 2e-5}
        else:
            assert t.optimizer.learning_rate == 2e-5 and t.global_batch_size == 128 and cfg.data.template == "vicuna_v1"
        assert cfg.data.seq_len == 2048 and t.optimizer.warmup_ratio == 0.03 and t.optimizer.schedule == "cosine"
        assert t.num_epochs == 1.0
        big = "13b" in path
        assert cfg.model.decoder.hidden_size == (5120 if big else 4096)
        assert cfg.model.decoder.num_layers == (40 if big else 32)
        assert cfg.model.vision.image_size == 336 and cfg.model.vision.num_layers == 24


def test_gather_supervised_keeps_each_rows_supervised_positions_in_order():
    h, _, t, m = _inputs(b=3, l=9)
    m = m.at[2].set(False)  # a row with nothing supervised
    cap = int(m.sum(-1).max())
    hg, tg, mg = losses.gather_supervised(h, t, m, cap)
    assert hg.shape == (3, cap, h.shape[-1])
    for r in range(3):
        idx = np.flatnonzero(np.asarray(m[r]))
        np.testing.assert_array_equal(np.asarray(mg[r]), np.arange(cap) < len(idx))
        np.testing.assert_array_equal(np.asarray(tg[r, :len(idx)]), np.asarray(t[r, idx]))
        np.testing.assert_array_equal(np.asarray(hg[r, :len(idx)]), np.asarray(h[r, idx]))


def test_run_dir_of_another_config_is_refused_once_it_logged_a_step(tmp_path):
    from train.run_dir import check_run_dir
    from vlm_jax.config import Config, dump_yaml

    old, new = Config(run_dir=str(tmp_path)), Config(run_dir=str(tmp_path))
    new.model.decoder.num_layers += 1
    new.train.num_steps += 5  # a resumed run may go on longer
    dump_yaml(old, str(tmp_path / "config.yaml"))
    (tmp_path / "metrics.jsonl").write_text("")
    check_run_dir(new)  # stopped before its first step (e.g. a bad init_from): nothing to keep
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(ConfigError, match=rf"{tmp_path} holds a run with another config .*: model.decoder.num_layers "
                                          "differ"):
        check_run_dir(new)
    check_run_dir(old)


def test_a_data_source_added_on_resume_is_a_config_change(tmp_path):
    from train.run_dir import check_run_dir
    from vlm_jax.config import Config, DataSourceConfig, dump_yaml

    old = Config(run_dir=str(tmp_path))
    old.data.sources = [DataSourceConfig(path="a.json")]
    new = Config(run_dir=str(tmp_path))
    new.data.sources = [DataSourceConfig(path="moved/a.json"), DataSourceConfig(path="b.json")]
    dump_yaml(old, str(tmp_path / "config.yaml"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(ConfigError, match=r": data.sources differ"):
        check_run_dir(new)
    new.data.sources = new.data.sources[:1]  # the same source in another place: a resumable move
    check_run_dir(new)
