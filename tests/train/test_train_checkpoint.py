"""Training checkpoints (resume, corrupt/incomplete fallback) and model checkpoint folders."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.train_standin import StandInVLM, tiny_config
from train import step as step_lib
from train import trainer
from vlm_jax import checkpoint as ck
from vlm_jax import sharding
from vlm_jax.config import MeshConfig


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    cfg.mesh = MeshConfig(data=2, fsdp=2, tensor=2)
    return step_lib.build_step(cfg, sharding.make_mesh(cfg.mesh), 10, model=StandInVLM(cfg.model))


def _state_at(setup, step):
    s = setup.init(0)
    return {**s, "step": jnp.asarray(step, jnp.int32),
            "params": jax.tree.map(lambda x: x + step, s["params"])}


def _same(a, b):
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _save_steps(setup, directory, steps):
    mgr = ck.TrainCheckpointer(directory, keep=5)
    for s in steps:
        mgr.save(_state_at(setup, s), {"index": s}, {"model": {}})
    mgr.close()


def test_restore_latest_is_exact_and_sharded(setup, tmp_path):
    _save_steps(setup, str(tmp_path), [2, 4])
    state, data = ck.TrainCheckpointer(str(tmp_path)).restore_latest(setup.abstract_state)
    assert data == {"index": 4} and int(state["step"]) == 4
    assert _same(state["params"], _state_at(setup, 4)["params"]) and _same(state["opt_state"], setup.init(0)["opt_state"])
    leaf = state["params"]["decoder"]["lm_head"]
    assert leaf.sharding == setup.state_shardings["params"]["decoder"]["lm_head"]


@pytest.mark.parametrize("damage", ["flip_bytes", "delete_meta", "truncate"])
def test_corrupt_newest_falls_back_to_previous(setup, tmp_path, damage):
    _save_steps(setup, str(tmp_path), [2, 4, 6])
    newest = tmp_path / "6"
    if damage == "delete_meta":
        os.remove(newest / "meta" / "metadata")
    else:
        files = [os.path.join(r, f) for r, _, fs in os.walk(newest / "params") for f in fs]
        big = max(files, key=os.path.getsize)
        data = bytearray(open(big, "rb").read())
        if damage == "flip_bytes":
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0x5A
        else:
            data = data[: len(data) // 2]
        open(big, "wb").write(bytes(data))
    (tmp_path / "8.orbax-checkpoint-tmp-1234").mkdir()  # an interrupted save: never a step
    mgr = ck.TrainCheckpointer(str(tmp_path))
    with pytest.warns(UserWarning, match="corrupt"):
        state, data = mgr.restore_latest(setup.abstract_state)
    assert data == {"index": 4} and int(state["step"]) == 4
    assert _same(state["params"], _state_at(setup, 4)["params"])
    assert mgr.all_steps() == [2, 4]
    assert os.path.isdir(tmp_path / "6.corrupt")  # set aside, not deleted


def test_checkpoint_of_another_process_count_is_refused_not_set_aside(setup, tmp_path):
    _save_steps(setup, str(tmp_path), [2])
    data = tmp_path / "2" / "data"
    os.rename(data / "process_0-of-1.json", data / "process_1-of-2.json")  # as a two-process run writes it
    with pytest.raises(ck.CheckpointMismatch, match="number of processes"):
        ck.TrainCheckpointer(str(tmp_path)).restore_latest(setup.abstract_state)
    assert ck.TrainCheckpointer(str(tmp_path)).all_steps() == [2]


def test_model_checkpoint_folder_roundtrip(setup, tmp_path):
    params = _state_at(setup, 1)["params"]
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    d = ck.save_model_checkpoint(str(tmp_path / "ckpt"), params, setup.model.cfg, tokenizer_dir=str(tok))
    assert sorted(os.listdir(d)) == ["model_config.yaml", "params", "tokenizer", "vlm_jax_model.json"]
    host, mcfg = ck.load_model_checkpoint(d)
    assert mcfg == setup.model.cfg and isinstance(jax.tree.leaves(host)[0], np.ndarray) and _same(host, params)
    sharded, _ = ck.load_params(d, setup.abstract_state["params"])
    assert _same(sharded, params)
    assert sharded["projector"]["kernel"].sharding == setup.state_shardings["params"]["projector"]["kernel"]
    assert ck.tokenizer_dir(d).endswith("tokenizer")


def test_load_params_from_a_run_dir_and_init_from_keeps_new_params(setup, tmp_path):
    run = tmp_path / "run"
    _save_steps(setup, str(run / "checkpoints"), [3])
    params, _ = ck.load_params(str(run), setup.abstract_state["params"])  # no final/: newest checkpoint
    assert _same(params, _state_at(setup, 3)["params"])
    partial = {k: v for k, v in params.items() if k != "vision_tower"}
    state, kept = trainer.replace_params(setup.init(0), partial)
    assert kept and all(k.startswith("vision_tower") for k in kept)
    assert _same(state["params"]["decoder"], params["decoder"])
