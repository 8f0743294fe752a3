"""demo.draws: one `python -m demo` per seed in its own folders, then every draw's table and worst cell
(the demo runs themselves are faked here; tests/demo/test_demo.py runs the real one, reduced)."""

import json
import os

import pytest

import demo.__main__ as demo
from demo import draws


def test_each_seed_runs_in_its_own_folders_and_the_worst_cells_are_printed(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_demo(argv):
        args = demo.parse_args(argv)
        calls.append((args.seed, args.layout, args.data, args.run_dir))
        os.makedirs(args.run_dir, exist_ok=True)
        summary = {lang: {"accuracy": 1.0, "answer_in_language": 1.0, "count": 4,
                          "per_category": {"color": 1.0, "shape": 1.0, "count": 1.0, "position": 1.0}}
                   for lang in ("english", "hindi")}
        summary["hindi"]["per_category"]["position"] = 0.9 + args.seed / 100
        with open(os.path.join(args.run_dir, "eval_summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f)
        return 0

    monkeypatch.setattr(demo, "main", fake_demo)
    data, runs = str(tmp_path / "demo_data"), str(tmp_path / "runs" / "demo")
    assert draws.main(["--seeds", "0", "2", "--layout", "free", "--data", data, "--run-dir", runs]) == 0
    assert calls == [(0, "free", data + "_free", runs + "_free"), (2, "free", data + "_free_seed2", runs + "_free_seed2")]
    out = capsys.readouterr().out
    assert "seed 0: worst cell hindi position 90.0%" in out and "seed 2: worst cell hindi position 92.0%" in out
    assert out.count("language") >= 2  # a table per draw
    assert draws.draw_dirs("d", "r", 0, "grid") == ("d", "r")  # seed 0 of the grid is `make demo` itself


def test_bad_seeds_exit_2():
    for bad in (["--seeds", "1", "1"], ["--seeds", "-1"], ["--layout", "x"]):
        with pytest.raises(SystemExit) as e:
            draws.main(bad)
        assert e.value.code == 2
