"""train.main and tools.inspect_data on bad data: one `error:` line, no traceback (Grain's or ours);
exit 2 for data no run can use (found while the loader is built), 1 for a run that fails on it."""


import os
import subprocess
import sys

from tests.helpers.data import make_records
from tests.train.test_train_cli import ROOT, cli, write_real_data_config

TRAIN = ["train.fake_data.enabled=false", "model.decoder.vocab_size=768", "train.num_steps=2"]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "grain" not in stderr.lower(), stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), stderr[-3000:]
    return errors[0]


def _records_with_a_missing_image():
    recs = make_records(12)
    recs[5] = {"id": "gone", "image": "missing.png",
               "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    return recs


def test_strict_mode_error_is_one_line(tmp_path):
    path = write_real_data_config(tmp_path, _records_with_a_missing_image(), seq_len=128, num_workers=1)
    r = cli(["--config", path, f"run_dir={tmp_path / 'run'}", "data.strict=true", "data.shuffle=false", *TRAIN])
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "train.json: record 5 (id 'gone'): missing_image: missing.png" in line

    inspect = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--config", path, "data.strict=true",
                              "data.shuffle=false", "--n", "8"], cwd=ROOT, capture_output=True, text=True)
    assert inspect.returncode == 1 and "record 5 (id 'gone')" in _one_error_line(inspect.stderr)


def test_unreadable_data_file_is_one_line_exit_2(tmp_path):
    path = write_real_data_config(tmp_path, make_records(4), seq_len=128)
    for name, content in (("latin1.json", b'[{"id": "caf\xe9"}]'), ("cut.json", b'[{"id": 1, "conversations": [')):
        (tmp_path / name).write_bytes(content)
        source = f"data.sources=[{{path: {tmp_path / name}}}]"
        r = cli(["--config", path, f"run_dir={tmp_path / name}.run", source, *TRAIN])
        assert r.returncode == 2 and name in _one_error_line(r.stderr)
        assert not os.path.exists(tmp_path / f"{name}.run" / "checkpoints")
        inspect = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--config", path, source], cwd=ROOT,
                                 capture_output=True, text=True)
        assert inspect.returncode == 2 and name in _one_error_line(inspect.stderr)


def test_all_bad_data_stops_with_the_skip_counts(tmp_path):
    path = write_real_data_config(tmp_path, [{"id": i, "conversations": "nope"} for i in range(30)], seq_len=128)
    r = cli(["--config", path, f"run_dir={tmp_path / 'run'}", *TRAIN], timeout=180)  # it spun at 100% CPU
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "30 records in a row" in line and "malformed_record: 30" in line, line

