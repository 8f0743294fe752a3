"""`python -m train.main`: bad configs, kill -9 + resume, two processes, compile-only, recipes."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from train.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join("/tmp", "vlm_jax_test_jit_cache")  # persistent XLA cache: reruns skip compiles

TINY = {
    "model": {
        "vision": {"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                   "num_heads": 2},
        "decoder": {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4},
    },
    "train": {
        "global_batch_size": 8,
        "num_steps": 8,
        "optimizer": {"learning_rate": 3.0e-3, "warmup_steps": 1},
        "checkpoint": {"every_steps": 2, "keep": 3, "export_final": False},
        "logging": {"progress_bar": False, "tensorboard": False},
        "eval": {"at_end": False},
        "fake_data": {"enabled": True, "seq_len": 24},
    },
    "mesh": {"data": -1},
}


def write_config(tmp_path, name="tiny.yaml", **top) -> str:
    cfg = json.loads(json.dumps(TINY))
    cfg.update(top)
    path = os.path.join(tmp_path, name)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def env(devices=1, **extra) -> dict:
    e = dict(os.environ)
    e.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=ROOT, **extra)
    return e


def cli(args, devices=1, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, env=env(devices), timeout=timeout,
                          capture_output=True, text=True, **kw)


def losses(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


# ----------------------------------------------------------------------------- bad usage -> exit 2


@pytest.mark.parametrize("overrides,message", [
    (["train.bogus=1"], "unknown config key 'train.bogus'"),
    (["train.global_batch_size=abc"], "train.global_batch_size: expected an int"),
    (["mesh.data=3"], "does not match the 8 available devices"),
    (["mesh.data=8", "train.global_batch_size=12"], "not divisible by the data axes"),
    (["train.fake_data.enabled=false", "data.sources=[{path: /no/such/data.json}]"], "data file not found"),
    (["train.nan_policy=ignore"], "train.nan_policy"),
    (["model.vision.position_init=rope"], "model.vision.position_init must be one of normal, sincos2d"),
    (["data.template=bogus"], "data.template: unknown 'bogus'"),
    (["data.seq_len=0"], "data.seq_len: must be >= 2"),
    (["data.seq_len=3"], "data.seq_len: 3 cannot hold an image"),
    (["train.fake_data.seq_len=3"], "train.fake_data.seq_len: 3 is too short"),
    (["data.too_long=foo"], "data.too_long"),
    (["model.projector.type=foo"], "unknown projector type 'foo'"),
    (["data.max_images=-1"], "data.max_images"),
    (["train.optimizer.learning_rate=-1.0"], "train.optimizer.learning_rate"),
    (["train.optimizer.learning_rate=.nan"], "train.optimizer.learning_rate"),
    (["train.optimizer.group_lr={projector: -2.0e-5}"], "train.optimizer.group_lr.projector"),
    (["model.image_token_id=500"], "model.image_token_id"),
])
def test_bad_config_one_line_exit_2(tmp_path, capsys, overrides, message):
    path = write_config(tmp_path, run_dir=str(tmp_path / "run"))
    assert main(["--config", path, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not os.path.exists(tmp_path / "run")  # nothing ran


def test_bad_yaml_is_one_line_exit_2(tmp_path, capsys):
    bad = {"unclosed.yaml": b"model: [1, 2\ntrain: {}\n", "tabs.yaml": b"model:\n\t- x\n",
           "latin1.yaml": "name: caf\u00e9\n".encode("latin-1")}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        assert main(["--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], err
        assert ("not UTF-8" if name == "latin1.yaml" else "invalid YAML: line ") in err[0], err


def test_usage_errors_exit_2_and_help():
    r = cli(["--config", "/no/such/config.yaml"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "config file not found" in r.stderr
    r = cli([])
    assert r.returncode == 2
    r = cli(["--help"])
    assert r.returncode == 0 and "--compile-only" in r.stdout and "key=value" in r.stdout


# ----------------------------------------------------------------------------- resume


def _files(root) -> dict:
    """Every file under root -> its bytes."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[str, str]:
    """(config path, run dir) of one finished 4-step run, shared read-only: copy it to change it."""
    tmp = tmp_path_factory.mktemp("first_run")
    path, dir_ = write_config(tmp), str(tmp / "run")
    r = cli(["--config", path, f"run_dir={dir_}", "train.num_steps=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    return path, dir_


def test_rerun_with_another_config_keeps_the_run_and_exits_2(first_run, tmp_path, capsys):
    """A run dir's checkpoints are not corrupt because the config changed: refuse, naming the run dir and
    the keys, keep everything; --start-over sets the run aside (renamed, nothing deleted), trains from 0."""
    path, dir_ = first_run[0], str(tmp_path / "run")
    shutil.copytree(first_run[1], dir_)
    before = _files(dir_)
    assert "checkpoints/4/meta/metadata" in before and "metrics.jsonl" in before and "config.yaml" in before
    for change, key in ((["model.decoder.num_layers=3"], "model.decoder.num_layers"),
                        (["train.trainable=[projector]"], "train.trainable")):
        assert main(["--config", path, f"run_dir={dir_}", "train.num_steps=4", *change]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and dir_ in err[0] and key in err[0], err
        assert _files(dir_) == before  # every checkpoint, metrics.jsonl and config.yaml as they were

    r = cli(["--config", path, f"run_dir={dir_}", "train.num_steps=4", "model.decoder.num_layers=3", "--start-over"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(os.path.join(dir_, "previous")) == before
    assert sorted(os.listdir(os.path.join(dir_, "checkpoints"))) == ["2", "4"] and len(losses(dir_)) == 4
    with open(os.path.join(dir_, "config.yaml")) as f:
        assert yaml.safe_load(f)["model"]["decoder"]["num_layers"] == 3


def test_init_from_another_model_is_one_line_exit_2(first_run, tmp_path):
    path, first = first_run
    r = cli(["--config", path, f"run_dir={tmp_path / 'second'}", f"train.init_from={first}",
             "model.decoder.intermediate_size=96"])
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "train.init_from: " in err[0] and "shape" in err[0], r.stderr[-3000:]


def test_kill_9_and_rerun_reproduces_losses_exactly(tmp_path):
    ref_dir, dir_ = str(tmp_path / "ref"), str(tmp_path / "killed")
    path = write_config(tmp_path)
    r = cli(["--config", path, f"run_dir={ref_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ref = losses(ref_dir)
    assert len(ref) == 8

    kill_after = random.Random().randint(3, 6)
    proc = subprocess.Popen([sys.executable, "-m", "train.main", "--config", path, f"run_dir={dir_}"], cwd=ROOT,
                            env=env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(dir_, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= kill_after:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli(["--config", path, f"run_dir={dir_}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(dir_) == ref, f"killed after {kill_after} logged steps"


def test_sigterm_saves_and_exits_0(tmp_path):
    dir_ = str(tmp_path / "run")
    path = write_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "train.main", "--config", path, f"run_dir={dir_}",
                             "train.num_steps=1000", "train.checkpoint.every_steps=1000"], cwd=ROOT, env=env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(dir_, "metrics.jsonl")
    while proc.poll() is None and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    steps = [int(s) for s in os.listdir(os.path.join(dir_, "checkpoints")) if s.isdigit()]
    assert steps and max(steps) >= 1 and "SIGTERM" in err


# ----------------------------------------------------------------------------- multi-host, planning, recipes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    path = write_config(tmp_path)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = ["mesh.data=2", "train.num_steps=4", "train.checkpoint.every_steps=2"]
    r = cli(["--config", path, f"run_dir={one}", *common], devices=2)
    assert r.returncode == 0, r.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "train.main", "--config", path, f"run_dir={two}", *common,
                               "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], cwd=ROOT, env=env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    np.testing.assert_allclose(losses(two), losses(one), atol=1e-6, rtol=0)
    assert os.path.exists(os.path.join(two, "checkpoints", "4", "data", "process_1-of-2.json"))


def test_compile_only_prints_per_device_memory(tmp_path):
    path = write_config(tmp_path, run_dir=str(tmp_path / "run"))
    e = env(1)
    e.pop("XLA_FLAGS")  # main must fake the 8 devices itself
    r = subprocess.run([sys.executable, "-m", "train.main", "--config", path, "--compile-only", "mesh.data=1",
                        "mesh.fsdp=8", "train.grad_accum_steps=1"], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'fsdp': 8" in r.stdout and "total per device" in r.stdout and "fits in 80 GB" in r.stdout, r.stdout
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_recipe_runs_stages_in_order_and_skips_done_ones(tmp_path):
    write_config(tmp_path, name="align.yaml")
    write_config(tmp_path, name="sft.yaml")
    recipe = os.path.join(tmp_path, "recipe.yaml")
    with open(recipe, "w") as f:
        yaml.safe_dump({"run_dir": str(tmp_path / "runs"), "overrides": ["train.checkpoint.export_final=true"],
                        "stages": [{"name": "align", "config": "align.yaml",
                                    "overrides": ["train.trainable=[projector]", "train.num_steps=2"]},
                                   {"name": "sft", "config": "sft.yaml", "overrides": ["train.num_steps=2"]}]}, f)
    r = cli(["--config", recipe])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialised from" in r.stderr and os.path.exists(tmp_path / "runs" / "sft" / "final" / "vlm_jax_model.json")
    r = cli(["--config", recipe])
    assert r.returncode == 0 and r.stderr.count("skipping") == 2, r.stderr[-2000:]


def write_real_data_config(tmp_path, train_records, eval_records=None, **data) -> str:
    """A tiny config over LLaVA JSON files (images and a SentencePiece tokenizer in tmp_path)."""
    from tests.helpers.data import write_images, write_json
    from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece

    tok = train_llama_like_sentencepiece(str(tmp_path / "tok"))
    write_images(str(tmp_path / "img"))
    src = lambda name: {"path": str(tmp_path / name), "image_folder": str(tmp_path / "img")}  # noqa: E731
    write_json(str(tmp_path / "train.json"), train_records)
    data = {"sources": [src("train.json")], "tokenizer": tok, "template": "vicuna_v1", "max_images": 2, **data}
    if eval_records is not None:
        write_json(str(tmp_path / "eval.json"), eval_records)
        data["eval_sources"] = [src("eval.json")]
    return write_config(tmp_path, data=data)


REAL = ["train.fake_data.enabled=false", "model.decoder.vocab_size=768", "train.num_steps=2"]
BAD = {"id": 0, "conversations": "nope"}  # a malformed record


def test_vocab_smaller_than_the_tokenizer_is_refused(tmp_path, capsys):
    from tests.helpers.data import make_records

    path = write_real_data_config(tmp_path, make_records(4), seq_len=64)
    assert main(["--config", path, f"run_dir={tmp_path / 'run'}", *REAL, "model.decoder.vocab_size=100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.decoder.vocab_size: 100 is smaller than the tokenizer's 700 tokens" in err[0], err
    assert not os.path.exists(tmp_path / "run")


def test_one_epoch_of_bad_records_ends_with_the_skip_counts(tmp_path):
    path = write_real_data_config(tmp_path, [{**BAD, "id": i} for i in range(30)], seq_len=64)
    r = cli(["--config", path, f"run_dir={tmp_path / 'run'}", *REAL, "data.num_epochs=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exhausted after 0 steps; 30 examples skipped (malformed_record: 30)" in r.stderr, r.stderr[-3000:]


def test_sigterm_while_the_loader_skips_saves_and_exits_0(tmp_path):
    """SIGTERM while the loader is still looking for a usable example (here: 200k bad records, a minute of
    skipping) is honoured at once: the state is saved and the run exits 0."""
    path = write_real_data_config(tmp_path, [{**BAD, "id": i} for i in range(200_000)], seq_len=64, num_workers=1)
    dir_ = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "train.main", "--config", path, f"run_dir={dir_}", *REAL,
                             "data.max_consecutive_skips=1000000000"], cwd=ROOT, env=env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:  # the loop starts reading right after the compile
        err.append(line)
        if "compiled the train step" in line:
            break
    time.sleep(2)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "SIGTERM" in rest, "".join(err) + rest[-3000:]
    assert time.time() - sent < 30
    assert os.listdir(dir_ / "checkpoints") == ["0"]


def test_real_data_pipeline_with_eval_and_final_export(tmp_path):
    from tests.helpers.data import make_records

    path = write_real_data_config(tmp_path, make_records(60), make_records(10, seed=1), seq_len=64, num_workers=1,
                                  pack_window=4)
    run = str(tmp_path / "run")
    r = cli(["--config", path, f"run_dir={run}", "train.fake_data.enabled=false", "model.decoder.vocab_size=768",
             "train.num_steps=-1", "train.num_epochs=0.5", "train.eval.at_end=true", "train.eval.num_batches=2",
             "train.checkpoint.export_final=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    steps = [r["step"] for r in recs if "loss" in r]
    assert "examples per row" in r.stderr and steps == list(range(1, len(steps) + 1)) and len(steps) >= 1
    assert all(k in recs[0] for k in ("loss", "learning_rate", "tokens_per_second", "skipped_examples"))
    assert 0 <= recs[-1]["eval_token_accuracy"] <= 1 and np.isfinite(recs[-1]["eval_loss"])
    assert os.path.exists(os.path.join(run, "final", "vlm_jax_model.json"))
    assert os.path.exists(os.path.join(run, "config.yaml"))


def test_skipped_examples_are_logged_with_the_step_that_consumed_their_batch(tmp_path):
    """The loop reads the next batch while a step runs; the count logged with step k must still be
    the loader's count after batch k, not k + 1."""
    from tests.helpers.data import make_records
    from train import data as data_lib
    from vlm_jax import config_io
    from vlm_jax.config import Config

    recs = make_records(40)
    for i in (13, 27):  # malformed: an image that does not exist
        recs[i] = {**recs[i], "image": "missing.png",
                   "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    path = write_real_data_config(tmp_path, recs, seq_len=256, num_workers=0, packing=False)
    overrides = ["train.fake_data.enabled=false", "model.decoder.vocab_size=768", "train.num_steps=6",
                 "train.global_batch_size=4", "train.logging.every_steps=1"]
    run = str(tmp_path / "run")
    r = cli(["--config", path, f"run_dir={run}", *overrides])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(run, "metrics.jsonl")) as f:
        logged = [json.loads(line)["skipped_examples"] for line in f if '"loss"' in line]

    cfg = config_io.load(Config, path, overrides)
    loader = data_lib.make_loader(cfg, "train", 4, 0, 4, 0, 1)
    expected = []
    for _ in range(6):
        next(loader)
        expected.append(int(loader.stats()["skipped_examples"]))
    assert 0 < expected[-1] <= 2 and expected[0] < expected[-1], expected  # the count grows during the run
    assert logged == expected
