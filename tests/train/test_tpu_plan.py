"""`--compile-only --topology NAME`: the TPU slice table, its errors, and (slow, libtpu) a real TPU compile."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from train import topologies
from train.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = {  # head_dim 128 (the TPU kernels' lane width), image of 2 x 2 patches
    "model": {
        "vision": {"image_size": 28, "patch_size": 14, "hidden_size": 128, "intermediate_size": 256, "num_layers": 2,
                   "num_heads": 1, "select_layer": -1},
        "decoder": {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_layers": 2, "num_heads": 2},
        "dtype": "bfloat16", "remat_policy": "full", "attention": "auto",
    },
    "train": {"global_batch_size": 8, "num_steps": 10, "fake_data": {"enabled": True, "seq_len": 256}},
    "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
}


def write(tmp_path, cfg=TINY) -> str:
    path = os.path.join(tmp_path, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


@pytest.mark.parametrize("name, libtpu, devices, hbm", [
    # MaxText's accelerator_to_spec_map: v5p-8 = "v5:2x2x1" megacore, 4 chips; v5e-256 = "v5e:16x16"
    ("v4-8", "v4:2x2x1", 4, 32.0), ("v4-128", "v4:4x4x4", 64, 32.0), ("v5p-8", "v5:2x2x1", 4, 95.74),
    ("v5p-128", "v5:4x4x4", 64, 95.74), ("v5e-4", "v5e:2x2", 4, 16.0), ("v5e-8", "v5e:2x4", 8, 16.0),
    ("v5e-16", "v5e:4x4", 16, 16.0), ("v5e-256", "v5e:16x16", 256, 16.0), ("v6e-8", "v6e:2x4", 8, 32.0),
    ("v6e-256", "v6e:16x16", 256, 32.0),
])
def test_slice_table(name, libtpu, devices, hbm):
    s = topologies.lookup(name)
    assert (s.libtpu_topology, s.num_devices, s.generation.hbm_gib) == (libtpu, devices, hbm)
    assert s.wrap == ((True,) * 3 if name in ("v4-128", "v5p-128") else (name.endswith("-256"),) * 2 + (False,))
    assert s.generation.chip_config == ("megacore" if name[:3] in ("v4-", "v5p") else "default")


def test_unknown_slice_and_missing_compiler_are_usage_errors(tmp_path, capsys, monkeypatch):
    path = write(tmp_path)
    assert main(["--config", path, "--compile-only", "--topology", "v9-8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown TPU slice 'v9-8'" in err and "v5p-8" in err
    monkeypatch.setattr(topologies, "libtpu_available", lambda: False)
    assert main(["--config", path, "--compile-only", "--topology", "v5p-8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'vlm-jax[tpu]'" in err
    assert main(["--config", path, "--topology", "v5p-8"]) == 2
    assert "go with --compile-only" in capsys.readouterr().err


def test_unknown_attention_fails_before_compiling(tmp_path, capsys):
    assert main(["--config", write(tmp_path), "--compile-only", "model.attention=flash"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.attention: unknown 'flash'" in err and "splash" in err


@pytest.mark.slow
@pytest.mark.skipif(not topologies.libtpu_available(), reason="needs libtpu: pip install 'vlm-jax[tpu]'")
def test_tiny_vlm_compiles_for_v5e_with_the_splash_kernel(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "train.main", "--config", write(tmp_path), "--compile-only",
                        "--topology", "v5e-4", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert plan["topology"] == "v5e-4" and plan["devices"] == 4 and plan["device_kind"].startswith("TPU v5")
    assert plan["attention"] == "splash" and plan["custom_calls"].get("tpu_custom_call", 0) >= 3  # fwd, dq, dkv
    assert plan["fits"] and 0 < plan["hbm_per_device_gib"] < plan["hbm_capacity_gib"] == 16.0
    assert plan["cost_model_step_seconds"] > 0 and plan["flops_per_step"] > 0
    assert "ESTIMATE (XLA:TPU cost model" in r.stdout
