"""The converter CLI: usage errors, clear errors on bad checkpoints, listing of unused tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from convert.cli import main
from convert.tensor_io import TensorReader
from tests.helpers.convert_models import make_hf_llava

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_module(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_and_usage_errors():
    r = run_module("--help")
    assert r.returncode == 0 and "import" in r.stdout and "assemble" in r.stdout
    r = run_module("import", "--help")
    assert r.returncode == 0 and "--format" in r.stdout
    for argv in ([], ["import"], ["import", "--format", "nope", "--src", "a", "--out", "b"], ["frobnicate"],
                 ["export", "--format", "llava", "--src", "a", "--out", "b", "--layout", "hf9"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv


def test_missing_source_is_exit_2(tmp_path, capsys):  # bad usage (issue 18 item 17; exit 1 before)
    assert main(["import", "--format", "hf-llava", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def _rewrite(src: str, edit) -> None:
    t = {k: torch.from_numpy(v) for k, v in TensorReader(src).iter_tensors()}
    edit(t)
    save_file(t, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})


def test_shape_mismatch_names_the_tensor(tmp_path, capsys):
    src = str(tmp_path / "hf")
    make_hf_llava(src, "clip", "llama", -2, "default")
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    _rewrite(src, lambda t: t.__setitem__(key, torch.zeros(95, 64)))
    assert main(["import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert key in err and "[95, 64]" in err and "[96, 64]" in err


def test_missing_and_unused_tensors_are_listed(tmp_path, capsys):
    src = str(tmp_path / "hf")
    make_hf_llava(src, "clip", "llama", -2, "default")
    _rewrite(src, lambda t: t.pop("multi_modal_projector.linear_2.bias"))
    assert main(["import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "missing tensors (1)" in err and "projector.linear_2.bias" in err

    make_hf_llava(src, "clip", "llama", -2, "default")
    assert main(["import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    # select_layer -2 of 3 layers: the last layer and the final LayerNorm are not used, but kept
    assert "vision_tower.encoder.layers.2.mlp.fc1.weight" in err and "vision_tower.post_layernorm.weight" in err
    kept = [i.key for i in TensorReader(str(tmp_path / "o" / "extra_tensors.safetensors")).infos()]
    assert "vision.encoder.layers.2.mlp.fc1.weight" in kept and len(kept) == 18
    with open(tmp_path / "o" / "conversion.json") as f:
        assert json.load(f)["source"]["format"] == "hf-llava"


def test_unsupported_config_is_a_clear_error(tmp_path, capsys):
    src = str(tmp_path / "hf")
    make_hf_llava(src, "siglip", "qwen2", -2, "default")  # 'default' would drop a SigLIP patch
    assert main(["import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "vision_feature_select_strategy" in capsys.readouterr().err


def test_export_to_hf_needs_an_image_token(tmp_path, capsys):
    """An original-LLaVA model (sentinel -200) cannot silently become an HF Llava."""
    from tests.helpers.convert_models import save_original, save_vision_folder

    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    save_original(hf, str(tmp_path / "orig"), "safetensors", True)
    save_vision_folder(hf, str(tmp_path / "clip"))
    assert main(["import", "--format", "llava", "--src", str(tmp_path / "orig"), "--vision", str(tmp_path / "clip"),
                 "--out", str(tmp_path / "ck"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "image_token_id=-200" in capsys.readouterr().err
