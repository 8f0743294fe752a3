"""Stage 0 of the demo: the vision tower learns what the generator drew, before LLaVA's stages freeze it.

    python -m demo.tower --data demo_data --out runs/demo/tower [--steps 4000] [--seed 0] [key=value ...]

LLaVA starts from a CLIP tower pretrained on web images; the demo has no hub, so it pretrains its own
tower on the shape world's labels, supervised as an image classifier is. Every patch learns, through a
linear read-out of the features LLaVA selects (`vision.select_layer`), whether an object's centre
lies in it, that object's colour and shape, and the patch's own row and column (with
`--position-target objects`, only the patches an object is centred in). A frozen random tower
keeps colour salient (it dominates the pixels) but not shape, so a decoder trained on it learns the
look-up by colour and not the one by shape; this stage makes both salient, and the position too.

Writes OUT as a model checkpoint: the whole VLM at its seeded initialisation with the trained tower
(the read-out is dropped), which stage 1 starts from (`train.init_from`). Prints the read-out's
accuracy on the held-out images. A finished OUT made with the same settings is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

import numpy as np

from demo import dataset, world
from demo.languages import COLORS, SHAPES

MODEL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo", "model.yaml")
HEADS = {"color": len(COLORS), "shape": len(SHAPES)}  # classes of the objects centred in a patch
POSITION_TARGETS = ("every-patch", "objects")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.tower", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset folder made by demo.make_data")
    p.add_argument("--out", required=True, help="model checkpoint folder to write")
    p.add_argument("--config", default=MODEL_CONFIG, help="model config (default configs/demo/model.yaml)")
    p.add_argument("--seed", type=int, default=0, help="init and batch order (default %(default)s)")
    p.add_argument("--steps", type=int, default=4000, help="(default %(default)s; python -m demo's too)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default %(default)s)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--position-target", choices=POSITION_TARGETS, default="every-patch",
                   help="which patches learn their row and column: every patch, or only those an object is centred "
                        "in (default %(default)s; python -m demo passes objects)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model config overrides (model.vision.*, ...)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.learning_rate <= 0:
        p.error("--steps and --batch-size must be >= 1 and --learning-rate > 0")
    args.every_patch = args.position_target == "every-patch"
    args.manifest = dataset.read_manifest(args.data)
    if args.manifest is None:
        p.error(f"--data: {args.data} holds no finished dataset (no readable {dataset.MANIFEST}); run demo.make_data")
    return args


def patch_labels(scene: world.Scene, grid: int) -> dict[str, np.ndarray]:
    """Per-patch targets of one image: colour and shape multi-hots of the objects centred in the patch."""
    out = {k: np.zeros((grid * grid, n), np.float32) for k, n in HEADS.items()}
    for o in scene.objs:
        cell = min(int(o.cy * grid), grid - 1) * grid + min(int(o.cx * grid), grid - 1)
        out["color"][cell, o.color] = 1.0
        out["shape"][cell, o.shape] = 1.0
    return out


def load_split(root: str, params: world.Params, split: str, grid: int) -> tuple[np.ndarray, dict]:
    """uint8 images [N, H, W, 3] and their stacked patch labels, read back from the dataset folder."""
    from PIL import Image

    if split == "train":
        n, folder, name, scene_of = params.num_train, "images", "{:06d}.png", lambda i: world.train_scene(params, i)
    else:
        n, folder, name, scene_of = params.num_eval, "eval/images", "{:04d}.png", lambda i: world.eval_scene(params, i)[0]
    images = np.stack([np.asarray(Image.open(os.path.join(root, folder, name.format(i))).convert("RGB"))
                       for i in range(n)])
    labels = [patch_labels(scene_of(i), grid) for i in range(n)]
    return images, {k: np.stack([lab[k] for lab in labels]) for k in HEADS}


def settings(args, cfg) -> dict:
    from vlm_jax.config_io import to_dict

    return {"demo_tower": {"data_hash": args.manifest["content_hash"], "seed": args.seed, "steps": args.steps,
                           "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                           **({} if args.every_patch else {"position_target": args.position_target}),
                           "vision": to_dict(cfg.vision)}}


def train_tower(cfg, images: np.ndarray, labels: dict, args, progress=None):
    """-> (trained tower params, read-out params)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from vlm_jax.config import OptimizerConfig
    from vlm_jax.models.vit import VisionTower
    from vlm_jax.models.vlm import normalize_images
    from vlm_jax.optim import lr_schedule

    v = cfg.vision
    tower = VisionTower(v)
    grid = v.image_size // v.patch_size
    width = 1 + sum(HEADS.values()) + 2 * grid
    k_tower, k_head = jax.random.split(jax.random.key(args.seed))
    params = {"tower": nn.unbox(tower.init(k_tower, jnp.zeros((1, v.image_size, v.image_size, 3)))["params"]),
              "head": {"kernel": jax.random.normal(k_head, (v.hidden_size, width)) * 0.02, "bias": jnp.zeros(width)}}
    warmup = min(100, args.steps // 10 + 1)
    schedule = lr_schedule(args.learning_rate, OptimizerConfig(warmup_steps=warmup, min_lr_ratio=0.05), args.steps)
    opt = optax.adamw(schedule, weight_decay=0.0)
    state = opt.init(params)
    rows = jnp.repeat(jnp.arange(grid), grid)
    cols = jnp.tile(jnp.arange(grid), grid)

    def readout(p, pixels):
        feats = tower.apply({"params": p["tower"]}, normalize_images(pixels, v.image_mean, v.image_std, jnp.float32))
        return feats @ p["head"]["kernel"] + p["head"]["bias"]  # [N, patches, width]

    def split_logits(logits):
        """-> occupied [N, P], colour, shape, row, column logits [N, P, classes]."""
        c, s = HEADS["color"], HEADS["shape"]
        return (logits[..., 0], logits[..., 1:1 + c], logits[..., 1 + c:1 + c + s],
                logits[..., 1 + c + s:1 + c + s + grid], logits[..., 1 + c + s + grid:])

    def occupied_mean(per_patch, occupied):
        return (per_patch * occupied).sum() / jnp.maximum(occupied.sum(), 1.0)

    def masked_ce(logits, multi_hot, occupied):
        # a patch holding two centres (free layout) splits its target between them
        target = multi_hot / jnp.maximum(multi_hot.sum(-1, keepdims=True), 1.0)
        return occupied_mean(optax.softmax_cross_entropy(logits, target), occupied)

    def loss_fn(p, pixels, color, shape):
        lo, lc, ls, lr, lk = split_logits(readout(p, pixels))
        occupied = (color.sum(-1) > 0).astype(jnp.float32)
        n = pixels.shape[0]
        row, col = jnp.broadcast_to(rows, (n, rows.size)), jnp.broadcast_to(cols, (n, cols.size))
        pos = optax.softmax_cross_entropy_with_integer_labels
        if args.every_patch:
            position = pos(lr, row).mean() + pos(lk, col).mean()
        else:  # background patches are left free to carry no position
            position = occupied_mean(pos(lr, row) + pos(lk, col), occupied)
        return (optax.sigmoid_binary_cross_entropy(lo, occupied).mean() + masked_ce(lc, color, occupied)
                + masked_ce(ls, shape, occupied) + position)

    @jax.jit
    def step(p, s, pixels, color, shape):
        loss, grads = jax.value_and_grad(loss_fn)(p, pixels, color, shape)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(args.seed)
    order, pos = rng.permutation(len(images)), 0
    for i in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        params, state, loss = step(params, state, images[idx], labels["color"][idx], labels["shape"][idx])
        if progress:
            progress(i, float(loss) if i % 50 == 0 or i == args.steps - 1 else None)
    return params, jax.jit(lambda p, x: split_logits(readout(p, x)))


def readout_accuracy(params, predict, images: np.ndarray, labels: dict, grid: int, every_patch: bool = True) -> dict:
    """Held-out accuracy of the read-out: per occupied patch, the colour and the shape it predicts
    are among those centred there; per patch, occupied or not, and its row and column."""
    hits = {"color": [], "shape": [], "occupied": [], "position": []}
    cells = np.arange(grid * grid)
    for s in range(0, len(images), 200):
        lo, lc, ls, lr, lk = (np.asarray(x) for x in predict(params, images[s:s + 200]))
        color, shape = labels["color"][s:s + 200], labels["shape"][s:s + 200]
        occ = color.sum(-1) > 0
        for key, logits, target in (("color", lc, color), ("shape", ls, shape)):
            hits[key].append(np.take_along_axis(target, logits.argmax(-1)[..., None], -1)[..., 0][occ] > 0)
        hits["occupied"].append(((lo > 0) == occ).ravel())
        where = np.ones_like(occ) if every_patch else occ
        hits["position"].append(((lr.argmax(-1) == cells // grid) & (lk.argmax(-1) == cells % grid))[where])
    return {k: float(np.concatenate(v).mean()) for k, v in hits.items()}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from vlm_jax.config import Config, ConfigError, load

    try:
        cfg = load(Config, args.config, args.overrides).model
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from vlm_jax import checkpoint as ckpt_lib

    meta = settings(args, cfg)
    marker = os.path.join(args.out, ckpt_lib.MODEL_MARKER)
    if ckpt_lib.is_model_checkpoint(args.out):
        with open(marker, encoding="utf-8") as f:
            if {k: v for k, v in json.load(f).items() if k in meta} == meta:
                print(f"reusing the trained tower in {args.out}")
                return 0
        print(f"error: {args.out} holds a model checkpoint made with other settings; remove it or choose "
              f"another --out", file=sys.stderr)
        return 2
    import jax
    from tqdm import tqdm

    from vlm_jax.models.vlm import VLM

    t0 = time.time()
    params_w = world.Params(**args.manifest["params"])
    grid = cfg.vision.image_size // cfg.vision.patch_size
    images, labels = load_split(args.data, params_w, "train", grid)
    with tqdm(total=args.steps, desc="tower", unit="step", disable=args.quiet) as bar:
        def progress(i, loss):
            bar.update(1)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}")

        trained, predict = train_tower(cfg, images, labels, args, progress)
    eval_images, eval_labels = load_split(args.data, params_w, "eval", grid)
    acc = readout_accuracy(trained, predict, eval_images, eval_labels, grid, args.every_patch)
    print("held-out read-out: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items())
          + f" ({len(eval_images)} images, {time.time() - t0:.0f}s)")
    params = VLM(cfg).init_params(jax.random.key(args.seed))
    params = {**params, "vision_tower": trained["tower"]}
    tokenizer = os.path.join(args.data, "tokenizer")
    ckpt_lib.save_model_checkpoint(args.out, params, cfg, tokenizer if os.path.isdir(tokenizer) else None,
                                   {**meta, "readout_accuracy": acc})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
