"""Our param tree <-> canonical tensor names, independent of any checkpoint layout.

Canonical names are the HF module-relative names with a role prefix:
  vision.<CLIP/SigLIP vision_model key>   e.g. vision.encoder.layers.3.mlp.fc1.weight
  projector.linear_<k>.{weight,bias}      (HF LlavaMultiModalProjector names; other projectors: our module
                                          names, e.g. projector.block_1.dw_conv.weight, projector.norm.weight)
  aligngpt.<AlignGPT key>                 aligngpt.align_indicators.indicator_embs, aligngpt.gated_weight_layer.mlp.0.weight
  lm.<LlamaModel/Qwen2Model key>          e.g. lm.layers.0.self_attn.q_proj.weight
  lm_head.weight
Each format (convert/formats/) and assemble.py only map their keys to these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vlm_jax.config import ModelConfig
from vlm_jax.models.vit import num_layers_used

# kind: how an HF tensor becomes our leaf (per layer): linear = transpose, conv = OIHW -> HWIO
# conv1x1: a 1x1 Conv2d [O, I, 1, 1] that is a Dense kernel [I, O] here (MobileVLM's squeeze-excite/pointwise)
TO_OURS = {"linear": lambda t: t.T, "conv": lambda t: t.transpose(2, 3, 1, 0), "copy": lambda t: t,
           "conv1x1": lambda t: t[:, :, 0, 0].T}
TO_HF = {"linear": lambda t: t.T, "conv": lambda t: t.transpose(3, 2, 0, 1), "copy": lambda t: t,
         "conv1x1": lambda t: t.T[:, :, None, None]}
HF_SHAPE = {"linear": lambda s: s[::-1], "conv": lambda s: (s[3], s[2], s[0], s[1]), "copy": lambda s: s,
            "conv1x1": lambda s: (s[1], s[0], 1, 1)}


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


def _linear(prefix: str, path: tuple[str, ...], bias: bool = True, kind: str = "linear") -> list[Entry]:
    e = [Entry(f"{prefix}.weight", (*path, "kernel"), None, kind)]
    return e + [Entry(f"{prefix}.bias", (*path, "bias"), None, "copy")] if bias else e


def _norm(prefix: str, path: tuple[str, ...]) -> list[Entry]:
    return [Entry(f"{prefix}.weight", (*path, "scale"), None, "copy"), Entry(f"{prefix}.bias", (*path, "bias"), None, "copy")]


def _ldp_block(i: int) -> list[Entry]:
    p, n = ("projector", f"block_{i}"), f"projector.block_{i}"
    return ([Entry(f"{n}.dw_conv.weight", (*p, "dw_conv", "kernel"), None, "conv")] + _norm(f"{n}.dw_norm", (*p, "dw_norm"))
            + _linear(f"{n}.se_fc1", (*p, "se_fc1"), kind="conv1x1") + _linear(f"{n}.se_fc2", (*p, "se_fc2"), kind="conv1x1")
            + _linear(f"{n}.project", (*p, "project"), bias=False, kind="conv1x1") + _norm(f"{n}.project_norm", (*p, "project_norm")))


def projector_entries(cfg: ModelConfig) -> list[Entry]:
    t = cfg.projector.type
    mlp = [x for k in (1, 2) for x in _linear(f"projector.linear_{k}", ("projector", f"linear_{k}"))]
    if t == "ldpnet":
        return mlp + _ldp_block(1) + _ldp_block(2)
    if t == "mlp_downsample":
        return _norm("projector.norm", ("projector", "norm")) + mlp
    if t == "multiscale-pool":
        return mlp
    return [x for k in range(1, projector_depth(cfg) + 1) for x in _linear(f"projector.linear_{k}", ("projector", f"linear_{k}"))]


def aligngpt_entries(cfg: ModelConfig) -> list[Entry]:
    if not cfg.aligngpt.enabled:
        return []
    gate = ("gated_weight_layer",)
    return ([Entry("aligngpt.align_indicators.indicator_embs", ("align_indicators", "indicator_embs"), None, "copy")]
            + _linear("aligngpt.gated_weight_layer.mlp.0", (*gate, "mlp_0")) + _linear("aligngpt.gated_weight_layer.mlp.2", (*gate, "mlp_2")))


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
    return vision_entries(cfg) + projector_entries(cfg) + decoder_entries(cfg) + aligngpt_entries(cfg)


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


def vision_fillers(cfg: ModelConfig) -> dict:
    """Tensors HF vision towers hold but LLaVA never uses (final LayerNorm): identity values, so that
    a model trained from scratch loads without 'missing weights'."""
    d = cfg.vision.hidden_size
    return {"vision.post_layernorm.weight": np.ones((d,), np.float32),
            "vision.post_layernorm.bias": np.zeros((d,), np.float32)}


@dataclass(frozen=True)
class Fused:
    """What a key function returns for a source tensor that holds several canonical tensors, split in
    equal parts along axis 0 (timm's attention `qkv` = q, k, v)."""
    names: tuple[str, ...]


@dataclass(frozen=True)
class Squeezed:
    """A source tensor with a leading axis of size 1 that the canonical tensor lacks (timm's `pos_embed`)."""
    name: str


@dataclass(frozen=True)
class Part:
    """What an export key function returns for a canonical tensor that is part `index` of `count` of `key`."""
    key: str
    index: int
    count: int


@dataclass(frozen=True)
class Unsqueezed:
    key: str


def pieces(target, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], object]]:
    """A source tensor's canonical pieces: [(canonical name, its shape, slice of the source tensor)]."""
    if isinstance(target, Fused):
        n = len(target.names)
        if shape[0] % n:
            return []
        k = shape[0] // n
        return [(name, (k, *shape[1:]), np.s_[i * k:(i + 1) * k]) for i, name in enumerate(target.names)]
    if isinstance(target, Squeezed):
        return [(target.name, tuple(shape[1:]), 0)] if shape and shape[0] == 1 else []
    return [(target, tuple(shape), np.s_[...])] if target else []
