"""The reduced demo: generated data, tokenizer, both stages, multilingual eval, sampling, loss curve,
through the same code path as `make demo`, with a few steps on a tiny dataset."""

import json
import os

import pytest

import demo.__main__ as demo
from demo import make_data


def test_quick_demo_runs_end_to_end(tmp_path):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    # one extra round, not the default's two: the same code path, one subprocess less
    quick = ["--quick", "--sft-rounds", "1", "--data", str(data), "--run-dir", str(run_dir)]
    assert demo.main(quick) == 0
    summary = json.loads((run_dir / "eval_summary.json").read_text(encoding="utf-8"))
    assert sorted(summary) == sorted(["arabic", "bengali", "chinese", "english", "french", "hindi", "japanese",
                                      "russian", "spanish", "urdu"])
    for scores in summary.values():
        assert scores["count"] == 4 and 0.0 <= scores["accuracy"] <= 1.0
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    objects = json.loads((run_dir / demo.BY_OBJECTS).read_text(encoding="utf-8"))
    assert objects == demo.by_objects(demo.parse_args(["--data", str(data)]), str(run_dir / "eval"))
    assert list(objects) == ["color", "shape", "count", "position"]
    for stage in ("align", "sft"):
        rows = [json.loads(line) for line in open(run_dir / stage / "metrics.jsonl", encoding="utf-8")]
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert os.path.isdir(run_dir / "sft" / "final")
    # the extra round ran, and it is what is evaluated
    assert os.path.isdir(run_dir / "sft_more1" / "final") and not os.path.exists(run_dir / "sft_more2")
    # a rerun reuses the data, the trained stages and the answers
    assert demo.main(quick) == 0


def test_accuracy_by_objects_counts_each_scene_once_per_language(tmp_path):
    from demo import dataset, world

    data = tmp_path / "data"
    assert make_data.main(["--out", str(data), "--num-train", "8", "--num-eval", "8", "--no-tokenizer", "--quiet"]) == 0
    params = world.Params(**dataset.read_manifest(str(data))["params"])
    answers = tmp_path / "answers"
    answers.mkdir()
    for lang in ("english", "french"):
        refs = [json.loads(line) for line in open(data / "eval" / lang / "answers.jsonl", encoding="utf-8")]
        rows = [{"question_id": r["question_id"], "text": r["text"]} for r in refs]
        if lang == "english":  # one wrong answer, and one question left unanswered
            wrong, missing = refs[0], refs[1]
            rows[0]["text"] = "no such answer"
            rows = [r for r in rows if r["question_id"] != missing["question_id"]]
        (answers / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected: dict = {}
    for r in refs:  # 8 questions a language, two languages answered
        n = str(len(world.eval_scene(params, r["question_id"])[0].objs))
        misses = sum(1 for m in (wrong, missing) if m["question_id"] == r["question_id"])
        hits = expected.setdefault(r["category"], {}).setdefault(n, [])
        hits += [1.0] * (2 - misses) + [0.0] * misses
    got = demo.by_objects(demo.parse_args(["--data", str(data)]), str(answers))
    assert got == {c: {n: sum(v) / len(v) for n, v in sorted(expected[c].items())} for c in world.CATEGORIES}


def test_the_levers_reach_the_generator(monkeypatch):
    class Stop(Exception):
        pass

    calls = []

    def run(cmd):
        calls.append(cmd)
        raise Stop

    monkeypatch.setattr(demo, "run", run)
    with pytest.raises(Stop):
        demo.main(["--align-positions", "--position-weight", "3", "--data", "d", "--seed", "2",
                   "--sft-turns", "one", "--align-scenes", "all"])
    assert calls[0][:1] == ["demo.make_data"]
    assert "--align-positions" in calls[0] and calls[0][calls[0].index("--position-weight") + 1] == "3"
    assert calls[0][calls[0].index("--sft-turns") + 1] == "one" and calls[0][calls[0].index("--align-scenes") + 1] == "all"
    make_data.parse_args(calls[0][1:])  # every lever is one the generator accepts
    assert calls[0][calls[0].index("--seed") + 1] == "2"
    assert calls[0][calls[0].index("--objects-weights") + 1] == "1,2,3"  # the demo's default, not the generator's
    assert make_data.parse_args(["--out", "d"])[0].objects_weights == "1,1,1"


def test_stage_one_starts_from_the_pretrained_tower(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "run", calls.append)
    args = demo.parse_args(["--run-dir", str(tmp_path / "run"), "--seed", "1"])
    tower = demo.pretrain_tower(args)
    assert calls[-1][:1] == ["demo.tower"] and calls[-1][calls[-1].index("--out") + 1] == tower
    assert calls[-1][calls[-1].index("--position-target") + 1] == "objects"
    demo.train(args, tower)
    recipe = json.loads((tmp_path / "run" / "recipe.yaml").read_text(encoding="utf-8"))
    assert f"train.init_from={tower}" in recipe["stages"][0]["overrides"]
    assert not any(o.startswith("train.init_from") for o in recipe["stages"][1]["overrides"])
    assert demo.pretrain_tower(demo.parse_args(["--tower-steps", "0"])) is None


def test_the_free_layout_gets_its_own_geometry_everywhere(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(demo, "run", calls.append)
    args = demo.parse_args(["--layout", "free", "--run-dir", str(tmp_path / "run")])
    assert (args.image_size, args.patch_size) == (96, 16)
    assert (demo.parse_args([]).image_size, demo.parse_args([]).patch_size) == (96, 32)
    demo.train(args, demo.pretrain_tower(args))
    geometry = ["model.vision.image_size=96", "model.vision.patch_size=16"]
    assert calls[0][-2:] == geometry  # the tower's config overrides
    stages = json.loads((tmp_path / "run" / "recipe.yaml").read_text(encoding="utf-8"))["stages"]
    assert all(set(geometry) <= set(stage["overrides"]) for stage in stages)
    assert "data.seq_len=256" in stages[1]["overrides"]  # a free image is 36 tokens: longer SFT rows
    assert not any(o.startswith("data.seq_len") for o in demo.stage_overrides(demo.parse_args([]))[1])
    with pytest.raises(SystemExit) as e:
        demo.parse_args(["--image-size", "90", "--patch-size", "16"])
    assert e.value.code == 2 and "--patch-size must divide --image-size (90)" in capsys.readouterr().err


def test_eval_and_samples_prompt_as_sft_trains(monkeypatch, tmp_path):
    """configs/demo/sft.yaml trains without the system prompt: infer gets the same --template and --system."""
    from vlm_jax.config import Config, load

    data = load(Config, os.path.join(os.path.dirname(demo.RECIPE), "sft.yaml")).data
    assert data.system == ""
    calls = []
    monkeypatch.setattr(demo, "run", calls.append)
    monkeypatch.setattr(demo, "read_jsonl", lambda path: [{"text": "q", "image": "0.png"}] * 2)
    args = demo.parse_args(["--run-dir", str(tmp_path / "run")])
    demo.evaluate(args, "ckpt")
    demo.sample_answers(args, "ckpt")
    assert len(calls) == 2 and "--prompts" in calls[1]
    for cmd in calls:
        assert cmd[cmd.index("--template") + 1] == data.template and cmd[cmd.index("--system") + 1] == ""


def test_children_get_the_cpu_flags_unless_the_user_set_them(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert demo.child_env()["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {demo.CPU_FLAGS}"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    assert demo.child_env()["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
