"""The format registry and the public API: every format module registers its name, the CLI offers
exactly the registered formats, load_in_memory equals an import, options a format does not take are
usage errors."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from convert import api, formats
from convert.cli import build_parser, main
from convert.formats.base import REGISTRY
from tests.helpers.convert_models import make_hf_llava, save_original, save_vision_folder
from vlm_jax.checkpoint import load_model_checkpoint


def test_every_format_module_registers_its_name():
    names = formats.names()
    assert set(names) == {"aligngpt", "centurio", "hf-llava", "llava", "palo", "peft", "vila"}
    for n in names:
        assert formats.get(n).name == n
    assert set(REGISTRY) == set(names)
    for n in names:  # the CLI offers each (export: all but the import-only peft)
        build_parser().parse_args(["import", "--format", n, "--src", "a", "--out", "b"])
        if formats.get(n).exports:
            build_parser().parse_args(["export", "--format", n, "--src", "a", "--out", "b"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--format", "peft", "--src", "a", "--out", "b"])


def test_detect_format_from_config(tmp_path):
    cases = {"hf-llava": {"model_type": "llava", "text_config": {}, "vision_config": {}},
             "llava": {"model_type": "llava_llama", "mm_vision_tower": "x"},
             "palo": {"model_type": "mobilevlm", "mm_projector_type": "ldpnet"},
             "aligngpt": {"model_type": "aligngpt", "mm_projector_type": "mlp2x_gelu"},
             "vila": {"model_type": "llava", "llm_cfg": {}, "vision_tower_cfg": {}},
             "centurio": {"model_type": "llava", "text_config": {}, "timm_model": "vit_so400m_patch14_siglip_384"}}
    for want, config in cases.items():
        d = tmp_path / want
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        assert api.detect_format(str(d)) == want
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(api.ConversionError, match="model_type 'bert'"):
        api.detect_format(str(tmp_path / "bert"))


def test_load_in_memory_equals_import(tmp_path):
    make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    with open(tmp_path / "hf" / "preprocessor_config.json", "w") as f:
        json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_center_crop": True}, f)
    params, cfg, pre = api.load_in_memory(str(tmp_path / "hf"))
    api.import_checkpoint("hf-llava", str(tmp_path / "hf"), str(tmp_path / "ck"), progress=False)
    ref, ref_cfg = load_model_checkpoint(str(tmp_path / "ck"))
    assert cfg == ref_cfg and pre.aspect == "crop" and api.preprocessing(str(tmp_path / "ck")) == pre
    jax.tree.map(np.testing.assert_array_equal, params, ref)
    assert not os.path.exists(tmp_path / "hf" / "extra_tensors.safetensors")

    # an original LLaVA folder without its tower: the tower from --vision, LLaVA's pad
    hf = make_hf_llava(str(tmp_path / "hf2"), "clip", "llama", -2, "default")
    save_original(hf, str(tmp_path / "orig"), "safetensors", False)
    save_vision_folder(hf, str(tmp_path / "clip"))
    p2, cfg2, pre2 = api.load_in_memory(str(tmp_path / "orig"), vision=str(tmp_path / "clip"))
    assert pre2.aspect == "pad" and cfg2.image_token_id == -200
    with pytest.raises(api.ConversionError, match="no vision tower"):
        api.load_in_memory(str(tmp_path / "orig"))


def test_options_a_format_does_not_take_are_usage_errors(tmp_path, capsys):
    for argv in (["export", "--format", "vila", "--src", "a", "--out", "b", "--layout", "hf4"],
                 ["export", "--format", "hf-llava", "--src", "a", "--out", "b", "--weights", "bin"],
                 ["import", "--format", "hf-llava", "--src", "a", "--out", "b", "--vision", "v"],
                 ["import", "--format", "peft", "--src", "a", "--out", "b"],
                 ["export", "--format", "llava", "--src", "a", "--out", "b", "--base-model", "m"]):
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
