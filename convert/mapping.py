"""Our param tree <-> canonical tensor names, independent of any checkpoint layout.

Canonical names are the HF module-relative names with a role prefix:
  vision.<CLIP/SigLIP vision_model key>   e.g. vision.encoder.layers.3.mlp.fc1.weight
  projector.linear_<k>.{weight,bias}      (HF LlavaMultiModalProjector names)
  lm.<LlamaModel/Qwen2Model key>          e.g. lm.layers.0.self_attn.q_proj.weight
  lm_head.weight
Each layout module (hf_llava, llava_original, assemble) only maps its keys to these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vlm_jax.config import ModelConfig
from vlm_jax.models.vit import num_layers_used

# kind: how an HF tensor becomes our leaf (per layer): linear = transpose, conv = OIHW -> HWIO
TO_OURS = {"linear": lambda t: t.T, "conv": lambda t: t.transpose(2, 3, 1, 0), "copy": lambda t: t}
TO_HF = {"linear": lambda t: t.T, "conv": lambda t: t.transpose(3, 2, 0, 1), "copy": lambda t: t}
HF_SHAPE = {"linear": lambda s: s[::-1], "conv": lambda s: (s[3], s[2], s[0], s[1]), "copy": lambda s: s}


@dataclass(frozen=True)
class Entry:
    key: str  # canonical name
    path: tuple[str, ...]  # path of our param leaf
    layer: Optional[int]  # index on the leaf's stacked leading axis, None if not stacked
    kind: str  # linear | conv | copy


def projector_depth(cfg: ModelConfig) -> int:
    t = cfg.projector.type
    if t == "linear":
        return 1
    if t == "identity":
        return 0
    m = re.fullmatch(r"mlp(\d+)x_gelu", t)
    if not m:
        raise ValueError(f"projector type '{t}' has no checkpoint mapping (supported: linear, mlpNx_gelu, identity)")
    return int(m.group(1))


def vision_entries(cfg: ModelConfig) -> list[Entry]:
    v = cfg.vision
    e = [Entry("vision.embeddings.patch_embedding.weight", ("vision_tower", "patch_embedding", "kernel"), None, "conv"),
         Entry("vision.embeddings.position_embedding.weight", ("vision_tower", "position_embedding"), None, "copy")]
    if v.kind == "siglip":
        e.append(Entry("vision.embeddings.patch_embedding.bias", ("vision_tower", "patch_embedding", "bias"), None, "copy"))
    else:
        e.append(Entry("vision.embeddings.class_embedding", ("vision_tower", "class_embedding"), None, "copy"))
        for hf, ours in (("weight", "scale"), ("bias", "bias")):
            e.append(Entry(f"vision.pre_layrnorm.{hf}", ("vision_tower", "pre_layernorm", ours), None, "copy"))
    sub = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
           "out_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(num_layers_used(v)):
        for ours, hf in sub.items():
            e.append(Entry(f"vision.encoder.layers.{i}.{hf}.weight", ("vision_tower", "layers", ours, "kernel"), i, "linear"))
            e.append(Entry(f"vision.encoder.layers.{i}.{hf}.bias", ("vision_tower", "layers", ours, "bias"), i, "copy"))
        for ln in ("layer_norm1", "layer_norm2"):
            e.append(Entry(f"vision.encoder.layers.{i}.{ln}.weight", ("vision_tower", "layers", ln, "scale"), i, "copy"))
            e.append(Entry(f"vision.encoder.layers.{i}.{ln}.bias", ("vision_tower", "layers", ln, "bias"), i, "copy"))
    return e


def projector_entries(cfg: ModelConfig) -> list[Entry]:
    e = []
    for k in range(1, projector_depth(cfg) + 1):
        e.append(Entry(f"projector.linear_{k}.weight", ("projector", f"linear_{k}", "kernel"), None, "linear"))
        e.append(Entry(f"projector.linear_{k}.bias", ("projector", f"linear_{k}", "bias"), None, "copy"))
    return e


def decoder_entries(cfg: ModelConfig) -> list[Entry]:
    d = cfg.decoder
    e = [Entry("lm.embed_tokens.weight", ("decoder", "embed_tokens", "embedding"), None, "copy"),
         Entry("lm.norm.weight", ("decoder", "norm", "scale"), None, "copy")]
    if not d.tie_embeddings:
        e.append(Entry("lm_head.weight", ("decoder", "lm_head", "kernel"), None, "linear"))

    def layer(i: int, *rest: str):
        return (("decoder", "layers", *rest), i) if cfg.scan_layers else (("decoder", f"layers_{i}", *rest), None)

    for i in range(d.num_layers):
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            e.append(Entry(f"lm.layers.{i}.self_attn.{n}.weight", *layer(i, n, "kernel"), "linear"))
            if d.qkv_bias and n != "o_proj":
                e.append(Entry(f"lm.layers.{i}.self_attn.{n}.bias", *layer(i, n, "bias"), "copy"))
        for n in ("gate_proj", "up_proj", "down_proj"):
            e.append(Entry(f"lm.layers.{i}.mlp.{n}.weight", *layer(i, n, "kernel"), "linear"))
        for n in ("input_layernorm", "post_attention_layernorm"):
            e.append(Entry(f"lm.layers.{i}.{n}.weight", *layer(i, n, "scale"), "copy"))
    return e


def all_entries(cfg: ModelConfig) -> list[Entry]:
    return vision_entries(cfg) + projector_entries(cfg) + decoder_entries(cfg)


def get_leaf(tree: dict, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def set_leaf(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def leaf_paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in tree.items():
        out.extend(leaf_paths(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)])
    return out


def hf_shape(entry: Entry, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of `entry`, given the shape of our (possibly stacked) leaf."""
    per_layer = tuple(leaf_shape[1:]) if entry.layer is not None else tuple(leaf_shape)
    return tuple(HF_SHAPE[entry.kind](per_layer))


def to_hf(entry: Entry, leaf: np.ndarray) -> np.ndarray:
    t = leaf[entry.layer] if entry.layer is not None else leaf
    return np.asarray(TO_HF[entry.kind](np.asarray(t)), order="C")
