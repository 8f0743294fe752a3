"""Recipe configs of the derived projects (PALO, MLAN, Centurio, VILA): every stage config trains a few
steps as a tiny variant (loss decreases), the MLAN mixtures hold their ratio, the Centurio tiling path
is K = 5, recipes resolve; the real sizes compile on an 8-device mesh (slow)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import recipes as rh
from train import data as data_lib
from train import stages
from vlm_jax.config import Config, load, load_yaml
from vlm_jax.image_layout import image_layout


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece

    return train_llama_like_sentencepiece(str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("stage", rh.RECIPE_STAGES)
def test_tiny_variant_trains_and_loss_decreases(stage, tmp_path, tokenizer):
    cfg = rh.tiny_config(stage, str(tmp_path), tokenizer)
    ls = rh.train_steps(cfg)
    assert len(ls) == cfg.train.num_steps and all(np.isfinite(ls)), ls
    assert np.mean(ls[-2:]) < np.mean(ls[:2]), ls


@pytest.mark.parametrize("stage,language,vision", [
    ("mlan/mlan_vicuna_7b_finetune", 0.5, 0.5), ("mlan/mlan_llama2_7b_finetune", 0.875, 0.125)])
def test_mlan_batches_hold_the_configured_ratio(stage, language, vision, tmp_path, tokenizer):
    cfg = rh.tiny_config(stage, str(tmp_path), tokenizer, extra=("data.packing=false",))
    assert [(s.name, s.weight) for s in cfg.data.sources] == [("language", language), ("vision", vision)]
    loader = data_lib.make_loader(cfg, "train", 8, 0, 8, 0, 1)
    rows = 8 * 10
    with_image = sum(int(next(loader)["image_mask"].any(axis=1).sum()) for _ in range(10))
    assert with_image == round(rows * vision)  # Grain's weighted mix is exact over whole periods
    assert loader.stats()["examples_by_source"] == {"language": round(rows * language), "vision": round(rows * vision)}


def test_centurio_tiling_path_gives_a_global_view_and_2x2_tiles(tmp_path, tokenizer):
    cfg = rh.tiny_config("centurio/centurio_qwen_finetune", str(tmp_path), tokenizer)
    assert cfg.data.image.tiling == "auto" and cfg.model.vision.kind == "siglip"
    batch = next(data_lib.make_loader(cfg, "train", 4, 0, 4, 0, 1))
    assert batch["images"].shape[2:] == (5, 56, 56, 3)
    glob, tiles = batch["images"][0, 0, 0], batch["images"][0, 0, 1:]
    assert not np.array_equal(tiles[0], tiles[3]) and not np.array_equal(glob, tiles[0])
    n = int((batch["tokens"][0] == cfg.model.image_token_id).sum())
    assert n == 16  # one image per row: SigLIP's (56/14)^2 patch tokens, same count after multiscale-pool


def test_real_centurio_and_vila_structure():

    cen = load(Config, rh.config_path("centurio/centurio_qwen_finetune"), [])
    assert image_layout(cen.model).tokens_per_image == 729 and image_layout(cen.model).crops_per_image == 5
    assert cen.model.decoder.qkv_bias and cen.data.template == "chatml" and cen.train.trainable == ["lora", "projector"]
    assert len(cen.model.lora.target_modules) == 7 and cen.model.lora.rank == 256
    vila = [load(Config, rh.config_path(f"vila/vila_7b_{s}"), []) for s in ("align", "pretrain", "sft")]
    assert [v.train.trainable for v in vila] == [["projector"], ["projector", "decoder"],
                                                 ["vision", "projector", "decoder"]]
    assert image_layout(vila[0].model).tokens_per_image == 144 and vila[1].data.interleaved_loss == "all"  # VILA-1.5 mmc4core: LazyMMC4Dataset, all text
    assert [s.caption_sequences for s in vila[1].data.sources] == [False, True]  # coyo: LazyCoyoDataset
    palo = load(Config, rh.config_path("palo/mobilepalo_1.7b_finetune"), [])
    assert image_layout(palo.model).tokens_per_image == 144 and palo.model.decoder.hidden_size == 2048


@pytest.mark.parametrize("recipe", rh.RECIPES)
def test_recipes_resolve_and_chain_their_stages(recipe):
    path = rh.config_path(recipe)
    resolved = stages.load_recipe(path, load_yaml(path), [], need_files=False)
    assert len(resolved) >= 2
    for prev, cur in zip(resolved, resolved[1:]):
        assert cur.follows_previous and cur.cfg.train.init_from == prev.cfg.run_dir


def _compile_only(stage: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=rh.ROOT)
    env.pop("XLA_FLAGS", None)  # train.main fakes the 8 devices of mesh.fsdp=8 itself
    r = subprocess.run([sys.executable, "-m", "train.main", "--config", rh.config_path(stage), "--compile-only",
                        "mesh.data=1", "mesh.fsdp=8"], cwd=rh.ROOT, env=env, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stage", rh.RECIPE_STAGES)
def test_real_size_compiles_on_8_devices(stage):
    out = _compile_only(stage)
    assert "'fsdp': 8" in out and re.search(r"total per device\s+[\d.]+ GiB", out), out


@pytest.mark.parametrize("override", ["run_dir=/elsewhere/r", 'run_dir="/elsewhere/r"'])
def test_run_dir_on_the_command_line_moves_the_whole_recipe(override):
    path = rh.config_path(rh.RECIPES[0])
    resolved = stages.load_recipe(path, load_yaml(path), [override], need_files=False)
    assert [s.cfg.run_dir for s in resolved] == [f"/elsewhere/r/{s.name}" for s in resolved]
    assert resolved[1].cfg.train.init_from == "/elsewhere/r/" + resolved[0].name
