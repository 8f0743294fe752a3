"""Stage 0 of the demo (demo.tower): the per-patch labels, the scenes they come from, the CLI."""

import json
import os

import jax
import numpy as np
import pytest

from demo import dataset, tower, world
from vlm_jax import checkpoint as ckpt_lib

VOCAB = ["model.decoder.vocab_size=600"]


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tower_grid"))
    dataset.write_dataset(root, world.Params(seed=5, num_train=48, num_eval=8))
    return root


@pytest.mark.parametrize("layout", world.LAYOUTS)
def test_the_scene_helpers_redraw_the_written_images(tmp_path, layout):
    params = world.Params(seed=3, num_train=20, num_eval=8, layout=layout)
    dataset.write_dataset(str(tmp_path), params)
    for i in range(params.num_train):
        png = world.png_bytes(world.render(world.train_scene(params, i), params.image_size))
        assert png == (tmp_path / "images" / f"{i:06d}.png").read_bytes()
    for i in range(params.num_eval):
        png = world.png_bytes(world.render(world.eval_scene(params, i)[0], params.image_size))
        assert png == (tmp_path / "eval" / "images" / f"{i:04d}.png").read_bytes()


def test_patch_labels_mark_the_patch_of_each_centre():
    objs = (world.Obj(color=2, shape=1, row=0, col=0, cx=0.10, cy=0.20, size=0.1),
            world.Obj(color=4, shape=3, row=2, col=1, cx=0.34, cy=0.67, size=0.1),  # just past the 1/3 and 2/3 lines
            world.Obj(color=0, shape=0, row=2, col=2, cx=0.99, cy=0.99, size=0.1))
    labels = tower.patch_labels(world.Scene(objs, 0), 3)
    assert labels["color"].shape == (9, 6) and labels["shape"].shape == (9, 4)
    assert {cell: (int(labels["color"][cell].argmax()), int(labels["shape"][cell].argmax()))
            for cell in range(9) if labels["color"][cell].any()} == {0: (2, 1), 7: (4, 3), 8: (0, 0)}
    assert labels["color"].sum() == 3 and labels["shape"].sum() == 3


def test_labelled_patches_show_their_colour(grid_data):
    """The image is the oracle: each labelled patch's most common non-background pixel is its colour."""
    params = world.Params(**dataset.read_manifest(grid_data)["params"])
    images, labels = tower.load_split(grid_data, params, "train", 3)
    palette = np.array([world.RGB[c] for c in world.COLORS])
    for img, color in zip(images[:16], labels["color"][:16]):
        for cell in range(9):
            r, c = divmod(cell, 3)
            px = img[32 * r:32 * r + 32, 32 * c:32 * c + 32].reshape(-1, 3).astype(int)
            dist = np.abs(px[:, None] - palette[None]).sum(-1)
            close = dist.min(-1) < 30
            if color[cell].any():
                assert np.bincount(dist.argmin(-1)[close]).argmax() == color[cell].argmax()
            else:
                assert close.sum() == 0


def test_cli_writes_a_checkpoint_stage_one_can_start_from(grid_data, tmp_path, capsys):
    out = str(tmp_path / "tower")
    assert tower.main(["--data", grid_data, "--out", out, "--steps", "3", "--batch-size", "8", "--quiet", *VOCAB]) == 0
    assert "held-out read-out" in capsys.readouterr().out
    from vlm_jax.config import Config, load
    from vlm_jax.models.vlm import VLM

    cfg = load(Config, tower.MODEL_CONFIG, VOCAB).model
    params, saved_cfg = ckpt_lib.load_params(out)
    assert saved_cfg == cfg
    fresh = VLM(cfg).init_params(jax.random.key(0))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, fresh)
    assert all(jax.tree.leaves(same["decoder"])) and all(jax.tree.leaves(same["projector"]))
    assert not all(jax.tree.leaves(same["vision_tower"]))  # trained
    marker = json.load(open(os.path.join(out, ckpt_lib.MODEL_MARKER), encoding="utf-8"))
    assert marker["demo_tower"]["steps"] == 3 and set(marker["readout_accuracy"]) == {"color", "shape", "occupied", "position"}
    assert not os.path.isdir(os.path.join(out, "tokenizer"))  # the fixture has no tokenizer

    # the same settings again: reused; other settings: refused, the checkpoint left as it was
    before = sorted(os.listdir(out))
    assert tower.main(["--data", grid_data, "--out", out, "--steps", "3", "--batch-size", "8", "--quiet", *VOCAB]) == 0
    assert "reusing" in capsys.readouterr().out
    assert tower.main(["--data", grid_data, "--out", out, "--steps", "4", "--batch-size", "8", "--quiet", *VOCAB]) == 2
    assert "other settings" in capsys.readouterr().err and sorted(os.listdir(out)) == before


def test_cli_bad_usage(tmp_path, grid_data, capsys):
    with pytest.raises(SystemExit) as e:
        tower.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "no finished dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        tower.main(["--data", grid_data, "--out", str(tmp_path / "o"), "--steps", "0"])
    assert e.value.code == 2
    assert tower.main(["--data", grid_data, "--out", str(tmp_path / "o"), "model.vision.nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err and not os.path.exists(tmp_path / "o")


def test_a_short_run_learns_colour_shape_and_position(grid_data, tmp_path):
    """A few hundred steps on 48 grid images: the read-out already tells the held-out patches apart."""
    params = world.Params(**dataset.read_manifest(grid_data)["params"])
    from vlm_jax.config import Config, load

    cfg = load(Config, tower.MODEL_CONFIG, VOCAB).model
    images, labels = tower.load_split(grid_data, params, "train", 3)
    args = tower.parse_args(["--data", grid_data, "--out", str(tmp_path / "o"), "--steps", "300", "--batch-size", "16"])
    trained, predict = tower.train_tower(cfg, images, labels, args)
    eval_images, eval_labels = tower.load_split(grid_data, params, "eval", 3)
    acc = tower.readout_accuracy(trained, predict, eval_images, eval_labels, 3)
    # chance: colour 1/6, shape 1/4, position 1/9
    assert acc["occupied"] >= 0.95 and acc["position"] >= 0.75 and acc["color"] >= 0.9 and acc["shape"] >= 0.5, acc


def test_position_target_objects_scores_and_records_only_the_occupied_patches(grid_data, tmp_path, capsys):
    params = world.Params(**dataset.read_manifest(grid_data)["params"])
    images, labels = tower.load_split(grid_data, params, "eval", 3)
    occupied = labels["color"].sum(-1) > 0
    cells = np.arange(9)

    def predict(_, batch):  # the right row and column on occupied patches, a wrong one elsewhere
        n = len(batch)
        occ = occupied[:n]
        row = np.where(occ, cells // 3, (cells // 3 + 1) % 3)
        one_hot = lambda idx: np.eye(3)[idx]
        return (np.where(occ, 1.0, -1.0), np.eye(6)[labels["color"][:n].argmax(-1)], np.eye(4)[labels["shape"][:n].argmax(-1)],
                one_hot(row), one_hot(np.broadcast_to(cells % 3, row.shape)))

    everywhere = tower.readout_accuracy(None, predict, images, labels, 3)
    on_objects = tower.readout_accuracy(None, predict, images, labels, 3, every_patch=False)
    assert on_objects["position"] == 1.0 and everywhere["position"] == pytest.approx(occupied.mean())

    out = str(tmp_path / "tower")
    argv = ["--data", grid_data, "--out", out, "--steps", "3", "--batch-size", "8", "--quiet", *VOCAB]
    assert tower.main([*argv, "--position-target", "objects"]) == 0
    marker = json.load(open(os.path.join(out, ckpt_lib.MODEL_MARKER), encoding="utf-8"))
    assert marker["demo_tower"]["position_target"] == "objects"
    assert tower.main(argv) == 2 and "other settings" in capsys.readouterr().err  # every-patch is another tower
