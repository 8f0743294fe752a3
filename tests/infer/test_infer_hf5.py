"""infer.sample --hf on folders as transformers 5 saves them (the image processor nested in
processor_config.json, no preprocessor_config.json): greedy ids equal HF generate's on the pixels of the
folder's own processor, for CLIP+LLaMA, CLIP+LLaMA-3 (GQA) and SigLIP+Qwen2; export writes processor
files AutoProcessor loads."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaProcessor

from convert import preprocessor
from convert.cli import main as convert_main
from infer import sample
from tests.helpers.infer_tiny import tiny, write_tokenizer
from vlm_jax.data import templates
from vlm_jax.tokenizer import load_tokenizer

TEMPLATE = {"clip-llama": "vicuna_v1", "clip-llama3": "vicuna_v1", "siglip-qwen2": "chatml"}


def save_hf5(root, arch: str) -> tuple:
    hf, _, _ = tiny(arch)
    path = str(root / arch)
    hf.save_pretrained(path)
    write_tokenizer(path)
    if arch.startswith("clip"):  # CLIP: resize the shortest side, centre crop; its own mean/std
        ip = preprocessor.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                             image_mean=[0.4, 0.5, 0.6], image_std=[0.3, 0.25, 0.2])
    else:
        ip = preprocessor.SiglipImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3)
    strategy = "default" if arch.startswith("clip") else "full"
    LlavaProcessor(image_processor=ip, tokenizer=AutoTokenizer.from_pretrained(path), patch_size=14,
                   vision_feature_select_strategy=strategy).save_pretrained(path)
    assert not os.path.exists(os.path.join(path, "preprocessor_config.json"))
    with open(os.path.join(path, "processor_config.json")) as f:
        assert "image_processor" in json.load(f)
    return hf, path


@pytest.mark.parametrize("arch", ["clip-llama", "clip-llama3", "siglip-qwen2"])
def test_hf5_folder_matches_hf_generate(arch, tmp_path, capsys):
    hf, path = save_hf5(tmp_path, arch)
    names = []
    for i, (h, w) in enumerate(((33, 50), (60, 31), (40, 40))):
        names.append(f"im{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / names[-1])
    with open(tmp_path / "prompts.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "what is in this image ?", "image": names[0]}) + "\n")
        f.write(json.dumps({"prompt": "<image> one <image> two ?", "images": names[1:]}) + "\n")
    argv = ["--hf", path, "--prompts", str(tmp_path / "prompts.jsonl"), "--image-folder", str(tmp_path), "--json",
            "--template", TEMPLATE[arch], "--max-new-tokens", "10", "--batch-size", "2"]
    assert sample.main(argv) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    proc = AutoProcessor.from_pretrained(path)
    pixel = proc.image_processor(images=[Image.open(tmp_path / n).convert("RGB") for n in names],
                                 return_tensors="pt")["pixel_values"]
    rows = [g["prompt_token_ids"] for g in got]
    length = max(map(len, rows))
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    att = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    eos = templates.stop_token_ids(TEMPLATE[arch], load_tokenizer(path))
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=att, pixel_values=pixel, max_new_tokens=10, do_sample=False,
                          eos_token_id=list(eos), pad_token_id=0)
    for g, r in zip(got, out[:, length:].tolist()):
        assert g["token_ids"] == r[: len(g["token_ids"])]
        assert len(g["token_ids"]) == 10 or g["token_ids"][-1] in eos


def test_export_writes_processor_files_both_versions_load(tmp_path):
    """Import a transformers-5 folder, export: preprocessor_config.json (the image processor, which
    transformers 4 reads) + processor_config.json without the nested copy; AutoProcessor gives the same
    LlavaProcessor and pixels."""
    _, path = save_hf5(tmp_path, "clip-llama")
    args = ["--no-progress"]
    assert convert_main(["import", "--format", "hf-llava", "--src", path, "--out", str(tmp_path / "ck"), *args]) == 0
    assert convert_main(["export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out",
                         str(tmp_path / "out"), *args]) == 0
    out = str(tmp_path / "out")
    with open(os.path.join(out, "processor_config.json")) as f:
        keys = json.load(f)
    assert "image_processor" not in keys and keys["patch_size"] == 14 and keys["processor_class"] == "LlavaProcessor"
    with open(os.path.join(out, "preprocessor_config.json")) as f:
        assert json.load(f)["crop_size"] == {"height": 28, "width": 28}
    with open(os.path.join(out, "tokenizer_config.json")) as f:  # in the form transformers 4 also takes
        tok = json.load(f)
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and tok["extra_special_tokens"] == {"image_token": "<image>"}
    a, b = AutoProcessor.from_pretrained(path), AutoProcessor.from_pretrained(out)
    assert type(b).__name__ == "LlavaProcessor" and b.patch_size == a.patch_size
    text = "<s> what is <image> in this image ?"
    assert b.tokenizer(text).input_ids == a.tokenizer(text).input_ids and b.tokenizer.image_token == "<image>"
    assert b.tokenizer.all_special_tokens == a.tokenizer.all_special_tokens
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (33, 50, 3), dtype=np.uint8))
    torch.testing.assert_close(b.image_processor(images=img, return_tensors="pt")["pixel_values"],
                               a.image_processor(images=img, return_tensors="pt")["pixel_values"], rtol=0, atol=0)


# run by a Python with transformers 4 installed (no torch): the exported folder's processor as v4 loads it
_V4_LOAD = """
import json, sys
import numpy as np
from PIL import Image
import transformers
from transformers import AutoProcessor
p = AutoProcessor.from_pretrained(sys.argv[1])
ip = p.image_processor
pix = ip(images=Image.open(sys.argv[2]).convert("RGB"), return_tensors="np")["pixel_values"]
print(json.dumps({"version": transformers.__version__, "processor": type(p).__name__, "patch_size": p.patch_size,
                  "strategy": p.vision_feature_select_strategy, "image_processor": type(ip).__name__,
                  "pixels": pix.tolist()}))
"""


@pytest.mark.slow
def test_export_loads_in_transformers4(tmp_path):
    """The exported folder in transformers 4 (a second Python named by VLM_JAX_TRANSFORMERS4_PYTHON; `make
    check-transformers4` builds one from PyPI): the same LlavaProcessor, patch size, strategy and pixels
    as transformers 5 gives for the source folder."""
    import subprocess
    import sys

    py = os.environ.get("VLM_JAX_TRANSFORMERS4_PYTHON")
    if not py:
        pytest.skip("VLM_JAX_TRANSFORMERS4_PYTHON (a Python with transformers<5) not set: make check-transformers4")
    _, path = save_hf5(tmp_path, "clip-llama")
    args = ["--no-progress"]
    assert convert_main(["import", "--format", "hf-llava", "--src", path, "--out", str(tmp_path / "ck"), *args]) == 0
    assert convert_main(["export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out",
                         str(tmp_path / "out"), *args]) == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (33, 50, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    run = subprocess.run([py, "-c", _V4_LOAD, str(tmp_path / "out"), str(tmp_path / "im.png")], capture_output=True,
                         text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr
    v4 = json.loads(run.stdout.strip().splitlines()[-1])
    assert v4["version"].startswith("4."), v4["version"]
    v5 = AutoProcessor.from_pretrained(path)
    base = lambda name: re.sub("(Fast|Pil)$", "", name)  # noqa: E731 (the same processor, another backend)
    assert (v4["processor"], v4["patch_size"], v4["strategy"], base(v4["image_processor"])) == (
        "LlavaProcessor", v5.patch_size, v5.vision_feature_select_strategy, base(type(v5.image_processor).__name__))
    want = v5.image_processor(images=Image.open(tmp_path / "im.png").convert("RGB"), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(np.asarray(v4["pixels"], np.float32), want, rtol=0, atol=1e-5)
    print(sys.version, v4["version"])
