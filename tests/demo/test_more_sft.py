"""demo.more_sft: extra SFT rounds, each a warm restart from the last round's checkpoint in a new data order."""

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


def test_no_rounds_keeps_the_sft_checkpoint(tmp_path):
    write_metrics(tmp_path / "sft" / "metrics.jsonl", [0.01] * 400)
    calls = []
    assert more_sft.extra_rounds(calls.append, "sft.yaml", str(tmp_path), "ckpt", ["seed=0"], seed=0, rounds=0) == "ckpt"
    assert calls == []


def test_rounds_continue_from_the_last_checkpoint_in_a_new_data_order(tmp_path, capsys):
    write_metrics(tmp_path / "sft" / "metrics.jsonl", [0.02] * 400)
    calls = []

    def run(cmd):  # a round that logs no loss (e.g. resumed at its end) does not stop the next
        calls.append(cmd)
        out = next(c for c in cmd if c.startswith("run_dir=")).split("=", 1)[1]
        write_metrics(tmp_path / os.path.basename(out) / "metrics.jsonl", [0.01] * 400 if len(calls) == 1 else [])

    got = more_sft.extra_rounds(run, "sft.yaml", str(tmp_path), "ckpt", ["seed=2", "data.seed=2"], seed=2, rounds=3)
    assert len(calls) == 3 and got == str(tmp_path / "sft_more3" / "final")
    assert "train.init_from=ckpt" in calls[0]
    assert f"train.init_from={tmp_path}/sft_more1/final" in calls[1]
    assert f"train.init_from={tmp_path}/sft_more2/final" in calls[2]
    for k, cmd in enumerate(calls, 1):  # a new data order each round; later overrides win over the stage's
        assert cmd[:3] == ["train.main", "--config", "sft.yaml"]
        assert cmd.index(f"seed={2 + 5 * k}") > cmd.index("seed=2") and f"data.seed={2 + 5 * k}" in cmd
        assert cmd[-len(more_sft.ROUND):] == more_sft.ROUND
    printed = capsys.readouterr().out
    assert "loss over its last 340 steps 0.0200" in printed and "loss over its last 340 steps 0.0100" in printed
    assert "no loss recorded" in printed
