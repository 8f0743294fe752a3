"""demo.more_sft: the first `always` extra SFT rounds on every run, later ones only while the trailing
training loss is above the bar."""

import json
import os

from demo import more_sft


def write_metrics(path, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)] + [{"step": len(losses), "eval": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_trailing_loss_is_the_mean_of_the_last_window(tmp_path):
    write_metrics(tmp_path / "m.jsonl", [5.0] * 10 + [0.02, 0.04])
    assert more_sft.trailing_loss(str(tmp_path / "m.jsonl"), window=2) == 0.03
    write_metrics(tmp_path / "empty.jsonl", [])
    assert more_sft.trailing_loss(str(tmp_path / "empty.jsonl")) is None


BAR = more_sft.BOUND_BELOW


def test_a_bound_run_gets_only_the_rounds_that_always_run(tmp_path):
    write_metrics(tmp_path / "sft" / "metrics.jsonl", [0.9 * BAR] * 400)
    calls = []
    got = more_sft.extra_rounds(calls.append, "sft.yaml", str(tmp_path), "ckpt", ["seed=0"], seed=0, rounds=3,
                                always=0)
    assert got == "ckpt" and calls == []

    def run(cmd):  # every round's own loss is under the bar: only the `always` ones run
        calls.append(cmd)
        out = next(c for c in cmd if c.startswith("run_dir=")).split("=", 1)[1]
        write_metrics(tmp_path / os.path.basename(out) / "metrics.jsonl", [0.9 * BAR] * 400)

    for always in (1, 2):
        calls.clear()
        got = more_sft.extra_rounds(run, "sft.yaml", str(tmp_path), "ckpt", ["seed=0"], seed=0, rounds=3,
                                    always=always)
        assert len(calls) == always and got == str(tmp_path / f"sft_more{always}" / "final")
    assert more_sft.ALWAYS >= 1  # the default runs at least one round on every draw


def test_rounds_continue_from_the_last_checkpoint_until_the_loss_is_under_the_bar(tmp_path):
    write_metrics(tmp_path / "sft" / "metrics.jsonl", [1.5 * BAR] * 400)
    calls = []

    def run(cmd):  # round 1 stays unbound, round 2 binds
        calls.append(cmd)
        out = next(c for c in cmd if c.startswith("run_dir=")).split("=", 1)[1]
        write_metrics(tmp_path / os.path.basename(out) / "metrics.jsonl", [1.2 * BAR if len(calls) == 1 else 0.9 * BAR] * 400)

    got = more_sft.extra_rounds(run, "sft.yaml", str(tmp_path), "ckpt", ["seed=2", "data.seed=2"], seed=2, rounds=3,
                                always=1)
    assert len(calls) == 2 and got == str(tmp_path / "sft_more2" / "final")
    assert f"train.init_from=ckpt" in calls[0] and f"train.init_from={tmp_path}/sft_more1/final" in calls[1]
    for k, cmd in enumerate(calls, 1):  # a new data order each round; later overrides win over the stage's
        assert cmd[:3] == ["train.main", "--config", "sft.yaml"]
        assert cmd.index(f"seed={2 + 5 * k}") > cmd.index("seed=2") and f"data.seed={2 + 5 * k}" in cmd
