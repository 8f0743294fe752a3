"""Tiny variants of the derived-project recipe configs (configs/{palo,mlan,centurio,vila}) and
generated data for them: the real YAML with tiny dims, the data paths swapped for generated files."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from vlm_jax import config_check
from vlm_jax.config import Config, load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every stage config of the recipes (the acceptance list of issue 7, points 3-5 and 7).
RECIPE_STAGES = [
    "palo/mobilepalo_1.7b_finetune", "palo/palo_7b_lora", "palo/palo_13b_lora",
    "mlan/mlan_vicuna_7b_finetune", "mlan/mlan_llama2_7b_finetune",
    "centurio/centurio_qwen_pretrain", "centurio/centurio_qwen_finetune",
    "vila/vila_7b_align", "vila/vila_7b_pretrain", "vila/vila_7b_sft",
]
RECIPES = ["mlan/recipe_vicuna_7b", "mlan/recipe_llama2_7b", "centurio/recipe_qwen", "vila/recipe_7b"]

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (240, 205, 30)}

TINY = [
    "model.vision.image_size=56", "model.vision.patch_size=14", "model.vision.hidden_size=32",
    "model.vision.intermediate_size=64", "model.vision.num_layers=2", "model.vision.num_heads=2",
    "model.decoder.vocab_size=768", "model.decoder.hidden_size=64", "model.decoder.intermediate_size=128",
    "model.decoder.num_layers=2", "model.decoder.num_heads=4", "model.dtype=float32", "model.remat_policy=none",
    "data.seq_len=160", "data.num_workers=1", "data.prefetch=4", "data.pack_window=4",
    "train.global_batch_size=4", "train.grad_accum_steps=1", "train.num_steps=6", "train.init_from=null",
    "train.loss_vocab_chunk=0", "train.optimizer.learning_rate=5.0e-3", "train.optimizer.group_lr={}",
    "train.optimizer.warmup_steps=0", "train.optimizer.schedule=constant",
    "train.checkpoint.every_steps=1000", "train.checkpoint.export_final=false", "train.checkpoint.async_save=false",
    "train.logging.every_steps=1", "train.logging.progress_bar=false", "train.logging.tensorboard=false",
    "train.eval.at_end=false",
    "mesh.data=-1", "mesh.fsdp=1",
]


def config_path(stage: str) -> str:
    return os.path.join(ROOT, "configs", f"{stage}.yaml")


def write_images(folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = []
    for name, rgb in COLORS.items():
        img = np.full((40, 48, 3), 245, np.uint8)
        img[8:32, 10:38] = rgb
        Image.fromarray(img).save(os.path.join(folder, f"{name}.png"))
        names.append(name)
    return names


def _caption(i, c):
    return {"id": f"cap{i}", "image": f"{c}.png",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {c} square"}]}


def _vqa(i, c):
    return {"id": f"vqa{i}", "image": f"{c}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the square?"},
        {"from": "gpt", "value": f"The square is {c}."}]}


def _text(i, _):
    n = i % 5 + 2
    return {"id": f"txt{i}", "conversations": [
        {"from": "human", "value": f"What is {n} plus {n}?"}, {"from": "gpt", "value": f"{n} plus {n} is {2 * n}."}]}


def _two_images(i, c, d):
    return {"id": f"pair{i}", "image": [f"{c}.png", f"{d}.png"], "conversations": [
        {"from": "human", "value": "The first image <image> and the second <image>. Which colors?"},
        {"from": "gpt", "value": f"First {c}, then {d}."}]}


def mmc4_doc(i, c, d):
    return {"id": f"doc{i}", "text_list": ["A page about shapes.", f"Here is a {c} square.", "It has four sides.",
                                           f"And a {d} one."],
            "image_info": [{"image_name": f"{d}.png", "matched_text_index": 3},
                           {"image_name": f"{c}.png", "matched_text_index": 1}]}


def coyo_record(i, colors):
    """COYO in the MMC4 layout: 4 captions, one image each (VILA's 4-sample item)."""
    cs = [colors[(i + j) % len(colors)] for j in range(4)]
    return {"id": f"coyo{i}", "text_list": [f"a {c} square" for c in cs],
            "image_info": [{"image_name": f"{c}.png", "matched_text_index": j} for j, c in enumerate(cs)]}


def write_data(tmp: str, kind: str, n: int = 8) -> tuple[list[str], str]:
    """Generated files for one data kind -> (source paths, image folder)."""
    images = os.path.join(tmp, "images")
    colors = write_images(images)
    pick = lambda i: colors[i % len(colors)]  # noqa: E731
    if kind == "mmc4":
        path = os.path.join(tmp, "docs.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps(mmc4_doc(i, pick(i), pick(i + 1))) + "\n")
        coyo = os.path.join(tmp, "coyo.jsonl")  # the second source of VILA's stage 2
        with open(coyo, "w") as f:
            f.writelines(json.dumps(coyo_record(i, colors)) + "\n" for i in range(n))
        return [path, coyo], images
    if kind == "mix":
        return [_write(tmp, "language.json", [_text(i, None) for i in range(n)]),
                _write(tmp, "vision.json", [_vqa(i, pick(i)) for i in range(n)])], images
    make = {"caption": _caption, "vqa": _vqa}.get(kind)
    if kind == "pairs":
        recs = [_two_images(i, pick(i), pick(i + 1)) for i in range(n)]
    else:
        recs = [make(i, pick(i)) for i in range(n)]
    return [_write(tmp, f"{kind}.json", recs)], images


def _write(tmp, name, recs) -> str:
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(recs, f)
    return path


def data_kind(cfg: Config) -> str:
    d = cfg.data
    if d.interleaved_loss != "all" or any(s.format == "jsonl" for s in d.sources):
        return "mmc4"
    if len(d.sources) == 2:
        return "mix"
    if d.images_in_place or (d.max_images > 1 and d.template != "plain"):
        return "pairs"
    return "caption" if d.template == "plain" else "vqa"


def tiny_config(stage: str, tmp: str, tokenizer: str, extra: tuple = ()) -> Config:
    """The stage's YAML with tiny dims and generated data (source count, weights and names kept)."""
    cfg = load(Config, config_path(stage), [*TINY, f"data.tokenizer={tokenizer}",
                                                      f"run_dir={os.path.join(tmp, 'run')}", *extra])
    if cfg.model.lora.rank:
        cfg.model.lora.rank, cfg.model.lora.alpha = 4, 8.0
    if cfg.model.decoder.num_kv_heads:
        cfg.model.decoder.num_kv_heads = 2
    cfg.data.max_images = min(cfg.data.max_images, 4)
    if "vision" not in cfg.train.trainable:
        cfg.model.vision.num_layers = 1  # hidden_states[-2] of 1 layer: the embeddings (less to compile)
    paths, images = write_data(os.path.join(tmp, "data"), data_kind(cfg))
    for src, path in zip(cfg.data.sources, paths):
        src.path, src.image_folder, src.max_examples = path, images, None
    config_check.check(cfg)
    return cfg


_COMPILED: dict = {}  # tiny variants with the same model/optimizer/shapes (e.g. PALO 7B and 13B) compile once
_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # a third less compile time, same losses


def train_steps(cfg: Config) -> list[float]:
    """cfg.train.num_steps optimizer steps on one device through the trainer's own state, step and data
    loader (train.trainer.train adds checkpoints and metrics, tested in tests/train); returns the losses."""
    import jax

    from train import data as data_lib
    from train import step as step_lib
    from vlm_jax import sharding
    from vlm_jax.config import to_dict

    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    rows, steps = cfg.train.global_batch_size, cfg.train.num_steps
    key = json.dumps([to_dict(cfg.model), to_dict(cfg.train), str(data_lib.batch_shapes(cfg, rows))], sort_keys=True)
    # a non-cryptographic PRNG: init compiles in half the time on CPU; the trainer's default is unchanged
    with jax.default_prng_impl("unsafe_rbg"):
        if key not in _COMPILED:
            setup = step_lib.build_step(cfg, mesh, steps)
            init = setup.init.lower(cfg.seed).compile(compiler_options=_FAST_COMPILE)
            step = setup.train_step.lower(init(cfg.seed), setup.abstract_batch).compile(
                compiler_options=_FAST_COMPILE)  # the state's rng is an unsafe_rbg key here: lower on a real one
            _COMPILED[key] = init, step
        init, step = _COMPILED[key]
        state = init(cfg.seed)
        loader = data_lib.make_loader(cfg, "train", rows, 0, rows, 0, 1)
        out = []
        for _ in range(steps):
            state, m = step(state, sharding.global_batch(next(loader), mesh, rows))
            out.append(float(m["loss"]))
    return out
