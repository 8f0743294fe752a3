"""infer.sample: --json ids equal HF generate (three architectures, a batch of different lengths),
streaming, usage errors."""

import json
import os

import numpy as np
import pytest
import torch

from infer import sample
from tests.helpers.infer_tiny import tiny, write_image, write_tokenizer
from vlm_jax.checkpoint import save_model_checkpoint
from vlm_jax.data import images as img_lib
from vlm_jax.data import templates
from vlm_jax.tokenizer import load_tokenizer

TEMPLATE = {"clip-llama": "vicuna_v1", "clip-llama3": "vicuna_v1", "siglip-qwen2": "chatml"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    for i in range(3):
        write_image(str(root / f"im{i}.png"), seed=i)
    with open(root / "prompts.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "what is in this image ?", "image": "im0.png"}) + "\n")
        f.write(json.dumps({"prompt": "describe red cat and blue dog please , one two"}) + "\n")
        f.write(json.dumps({"prompt": "<image> one <image> two ?", "images": ["im1.png", "im2.png"]}) + "\n")
    return root


def _model_dir(root, arch):
    """clip-llama as a CKPT folder (--checkpoint), the others as HF folders (--hf)."""
    hf, cfg, params = tiny(arch)
    if arch == "clip-llama":
        tok = write_tokenizer(str(root / "tok"))
        path = save_model_checkpoint(str(root / arch), params, cfg, tokenizer_dir=tok)
        return hf, ["--checkpoint", path]
    path = str(root / arch)
    hf.save_pretrained(path)
    write_tokenizer(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:  # -> aspect "resize", mean/std 0.5
        json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_center_crop": False}, f)
    return hf, ["--hf", path]


def _run(capsys, argv):
    assert sample.main(argv) == 0
    return capsys.readouterr().out


def _hf_generate(hf, rows, pixel, eos, max_new):
    length = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    att = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=att, pixel_values=pixel, max_new_tokens=max_new,
                          do_sample=False, eos_token_id=list(eos), pad_token_id=0)
    return [list(map(int, r)) for r in out[:, length:].numpy()]


@pytest.mark.parametrize("arch", ["clip-llama", "clip-llama3", "siglip-qwen2"])
def test_json_ids_match_hf_generate(arch, folder, capsys):
    hf, src = _model_dir(folder, arch)
    argv = src + ["--prompts", str(folder / "prompts.jsonl"), "--image-folder", str(folder), "--json",
                  "--template", TEMPLATE[arch], "--max-new-tokens", "12", "--batch-size", "3"]
    got = [json.loads(line) for line in _run(capsys, argv).splitlines()]
    assert len(got) == 3 and len({len(g["prompt_token_ids"]) for g in got}) >= 2
    from PIL import Image

    # the CLI's preprocessing (the images are not square): CKPT -> LLaVA's pad, HF folder -> its processor's resize
    aspect = "pad" if src[0] == "--checkpoint" else "resize"
    ims = [img_lib.crops(Image.open(folder / f"im{i}.png").convert("RGB"), aspect, 28, (0.5,) * 3)[0] for i in range(3)]
    pixel = torch.tensor(np.stack([(im / 255.0 - 0.5) / 0.5 for im in ims]).transpose(0, 3, 1, 2), dtype=torch.float32)
    tok = load_tokenizer(src[1] if arch != "clip-llama" else str(folder / "tok"))
    eos = templates.stop_token_ids(TEMPLATE[arch], tok)
    ref = _hf_generate(hf, [g["prompt_token_ids"] for g in got], pixel, eos, 12)
    for g, r in zip(got, ref):
        assert g["token_ids"] == r[: len(g["token_ids"])]
        assert len(g["token_ids"]) == 12 or g["token_ids"][-1] in eos
        assert isinstance(g["text"], str)


def test_stream_sampling_and_usage(folder, capsys):
    _, src = _model_dir(folder, "clip-llama")
    base = src + ["--template", "vicuna_v1", "--max-new-tokens", "20", "--image", str(folder / "im0.png"),
                  "--prompt", "what is this ?"]
    streamed = _run(capsys, base).strip()
    as_json = json.loads(_run(capsys, base + ["--json"]))
    assert streamed == as_json["text"]
    hot = ["--temperature", "1.5", "--top-k", "40", "--top-p", "0.9", "--json"]
    a = json.loads(_run(capsys, base + hot + ["--seed", "3"]))
    b = json.loads(_run(capsys, base + hot + ["--seed", "3"]))
    assert a == b

    for bad in (["--prompt", "x"],  # no model
                src + ["--prompt", "x", "--image", str(folder / "missing.png")],
                src + ["--prompt", "<image> x", "--template", "vicuna_v1"],  # tag without an image
                src + ["--prompt", "x", "--top-p", "0"],
                src + ["--prompt", "x", "--vision", str(folder / "no_such_tower")],
                src):  # no prompt
        with pytest.raises(SystemExit) as e:
            sample.main(bad)
        assert e.value.code == 2, bad
    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    assert e.value.code == 0
    capsys.readouterr()


def test_system_option_is_the_prompt_llava_builds_with_that_system(folder, capsys):
    """--system "" (a model trained with data.system: ""): LLaVA's vicuna_v1 prompt with its system emptied."""
    from tests.helpers import llava_reference as R

    _, src = _model_dir(folder, "clip-llama")
    base = src + ["--template", "vicuna_v1", "--max-new-tokens", "4", "--prompt", "red cat ?", "--json"]
    tok = load_tokenizer(str(folder / "tok"))
    for system, default in (("", False), ("Answer in one word.", False), (None, True)):
        conv = R.conv_vicuna_v1()
        if not default:
            conv.system = system
        conv.append_message(conv.roles[0], "red cat ?")
        conv.append_message(conv.roles[1], None)
        want = tok.encode(conv.get_prompt(), add_bos=True)
        got = json.loads(_run(capsys, base + ([] if default else ["--system", system])))["prompt_token_ids"]
        assert got == list(want), system
