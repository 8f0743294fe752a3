"""AlignGPT checkpoints: the flat `AlignGPTForCausalLM` layout imported through `convert import` gives the
logits of AlignGPT's (transcribed) PyTorch forward, and import -> export reproduces every tensor."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from tests.helpers.aligngpt_reference import IGNORE_INDEX, AlignGPTReference, AlignIndicator, GatedWeightLayer
from tests.helpers.convert_models import (
    assert_same_tensors,
    ckpt_logits,
    cli,
    images,
    make_hf_llava,
    make_tokenizer,
    original_state_dict,
    save_vision_folder,
    tensors,
)

N = 4  # 28 / 14 = 2x2 patches per image


def save_aligngpt(hf, path: str, ind: AlignIndicator, gate: GatedWeightLayer) -> None:
    # the original LLaVA names, with the projector and the tower at the top level (beside model.* and lm_head)
    top = ("model.mm_projector.", "model.vision_tower.")
    sd = {k[len("model."):] if k.startswith(top) else k: v for k, v in original_state_dict(hf).items()}
    sd["align_indicators.indicator_embs"] = ind.indicator_embs.detach().clone()
    sd.update({f"gated_weight_layer.{k}": v.detach().clone() for k, v in gate.state_dict().items()})
    os.makedirs(path, exist_ok=True)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    c = hf.config
    config = c.text_config.to_dict()
    config.update(architectures=["AlignGPTForCausalLM"], model_type="aligngpt",
                  mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=c.vision_config.hidden_size,
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_projector_type="mlp2x_gelu",
                  use_mm_proj=True, mm_use_im_start_end=False, image_aspect_ratio="pad")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    make_tokenizer(path)


def test_aligngpt_layout_matches_reference_and_round_trips(tmp_path):
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    torch.manual_seed(1)
    d = hf.config.text_config.hidden_size
    ind, gate = AlignIndicator(d), GatedWeightLayer(N)
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_(0, 0.5)
    src = str(tmp_path / "aligngpt")
    save_aligngpt(hf, src, ind, gate)
    save_vision_folder(hf, str(tmp_path / "clip"))
    cli("import", "--format", "aligngpt", "--src", src, "--vision", str(tmp_path / "clip"), "--out", str(tmp_path / "ck"))

    imgs = images(1)
    text = [1, 5, 6, -200, 7, 8, 9, 10, 11]
    ours_tokens = np.asarray([[1, -300, 5, 6] + [-200] * N + [7, 8, 9, 10, 11]], np.int32)
    ours, cfg = ckpt_logits(str(tmp_path / "ck"), ours_tokens, imgs)
    assert cfg.aligngpt.enabled and (cfg.aligngpt.num_indicators, cfg.aligngpt.gate_hidden) == (8, 256)

    lm = LlamaForCausalLM(hf.config.text_config).eval()
    lm.model.load_state_dict(hf.model.language_model.state_dict())
    lm.lm_head.load_state_dict(hf.lm_head.state_dict())
    x = (imgs.astype(np.float32) / 255.0 - np.asarray(cfg.vision.image_mean, np.float32)) / np.asarray(
        cfg.vision.image_std, np.float32)
    with torch.no_grad():
        hidden = hf.model.vision_tower(torch.tensor(x.transpose(0, 3, 1, 2)), output_hidden_states=True).hidden_states
        feats = hf.model.multi_modal_projector(hidden[-2][:, 1:])
        ids = torch.tensor([text])
        labels = torch.where(ids == -200, IGNORE_INDEX, ids)
        _, ref, _ = AlignGPTReference(lm, ind, gate, "finetune").forward(ids, torch.ones_like(ids, dtype=torch.bool),
                                                                          labels, [feats[0]])
    assert ref.shape == ours.shape
    assert np.abs(ours - ref.numpy()).max() < 1e-4

    cli("export", "--format", "aligngpt", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "out"))
    assert_same_tensors(tensors(src), tensors(str(tmp_path / "out")))
    with open(os.path.join(src, "config.json")) as f, open(tmp_path / "out" / "config.json") as g:
        assert json.load(f) == json.load(g)
