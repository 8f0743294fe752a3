"""`vila`: VILA checkpoints (NVlabs/VILA `LlavaLlamaModel.save_pretrained`).

  config.json      model_type "llava", architectures ["LlavaLlamaModel"], llm_cfg / vision_tower_cfg /
                   mm_projector_cfg (the sub-configs), mm_vision_select_layer, mm_vision_select_feature, ...
  llm/             an HF causal LM folder (LlamaForCausalLM / Qwen2ForCausalLM) + the tokenizer
  vision_tower/    an HF vision folder (SiglipVisionModel / CLIPVisionModel: vision_model.*) + preprocessor
  mm_projector/    config.json {mm_projector_type, model_type: v2l_projector} + weights `layers.*`
                   (mlp_downsample: layers.{1,2,4}; mlpNx_gelu: layers.{0,2,..}; see projector_keys.py)
The image placeholder is LLaVA's sentinel -200. Source tensors the model does not use are kept per
subfolder (`vila.<subfolder>.<key>`) so that an export reproduces each folder.
"""

from __future__ import annotations

import os
from typing import Optional

from convert import engine, folder_keys, hf_configs, mapping, preprocessor, projector_keys
from convert.files import read_json
from convert.formats.base import CheckpointFormat, Folder, Reading, register
from convert.preprocessor import Preprocessing
from convert.tensor_io import TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig
from vlm_jax.tokenizer import IMAGE_MARKER

PARTS = ("llm", "vision_tower", "mm_projector")
SIDE_FILES = {"llm": ("generation_config.json",), "vision_tower": ("preprocessor_config.json",), "mm_projector": ()}
CONFIG_KEYS = ("config", "llm_config", "vision_config", "projector_config")  # conversion.json names of the 4 configs
DOWNSAMPLE = {"mlp_downsample": None, "mlp_downsample_2x2_fix": "nvila"}  # mm_projector_type -> order (None: ask)
NVILA_KEYS = ("dynamic_s2", "image_encoder", "video_encoder")  # LlavaConfig attributes since the NVILA release
VILA15_KEYS = ("s2", "s2_scales")  # VILA-1.5's LlavaConfig attributes (kept since)


def downsample_order(top: dict, projector: dict, given: Optional[str]) -> str:
    """VILA's DownSampleBlock transposes the 2x2 grid since its NVILA release, under the same
    mm_projector_type: the era of the config tells which, or `--downsample-order`."""
    kind = projector.get("mm_projector_type")
    told = DOWNSAMPLE.get(kind) or ("nvila" if any(k in top for k in NVILA_KEYS) else
                                    "vila1.5" if any(k in top for k in VILA15_KEYS) else None)
    if given and told and given != told:
        raise engine.UsageError(f"--downsample-order {given}, but the config is {told}'s ({kind})")
    if not (given or told):
        raise engine.UsageError(f"mm_projector_type {kind!r}: the config does not tell VILA-1.5's DownSampleBlock "
                                "from NVILA's (transposed 2x2 grid); pass --downsample-order vila1.5|nvila")
    return given or told


def _kept(part: str, key: str) -> str:
    return f"vila.{part}.{key}"


def _unkept(part: str, name: str) -> Optional[str]:
    prefix = f"vila.{part}."
    return name[len(prefix):] if name.startswith(prefix) else None


def key_functions(projector_type: str, vision_model: bool = True) -> dict:
    """part -> (to_canonical, from_canonical) of the keys inside that subfolder."""

    def llm_to(key):
        return folder_keys.lm_key(key) or _kept("llm", key)

    def llm_from(name):
        return folder_keys.lm_name(name) or _unkept("llm", name)

    def vision_to(key):
        return folder_keys.vision_key(key) or _kept("vision_tower", key)

    def vision_from(name):
        if name.startswith("vision."):
            return ("vision_model." if vision_model else "") + name[7:]
        return _unkept("vision_tower", name)

    def proj_to(key):
        canon = projector_keys.to_canonical(key[len("layers."):], projector_type) if key.startswith("layers.") else None
        return canon or _kept("mm_projector", key)

    def proj_from(name):
        if name.startswith("projector."):
            rest = projector_keys.from_canonical(name, projector_type)
            return "layers." + rest if rest else None
        return _unkept("mm_projector", name)

    return {"llm": (llm_to, llm_from), "vision_tower": (vision_to, vision_from), "mm_projector": (proj_to, proj_from)}


def _part_of(name: str) -> str:
    if name.startswith("vila."):
        return name.split(".")[1]
    return {"lm": "llm", "lm_head": "llm", "vision": "vision_tower", "projector": "mm_projector"}[name.split(".")[0]]


def model_config(top: dict, llm: dict, vision: dict, projector: dict, pre: Optional[dict],
                 order: Optional[str] = None) -> ModelConfig:
    vc = hf_configs.vision_config_from_dict(vision)
    feature = "patch" if top.get("mm_vision_select_feature", "patch") == "patch" else "cls_patch"
    v = hf_configs.vision_from_hf(vc, int(top.get("mm_vision_select_layer", -2)), feature, pre)
    kind = projector.get("mm_projector_type", "mlp_downsample")
    p = ProjectorConfig(type=kind)
    if kind in DOWNSAMPLE:
        p = ProjectorConfig(type="mlp_downsample", downsample_order=downsample_order(top, projector, order))
    return ModelConfig(vision=v, projector=p,
                       decoder=hf_configs.decoder_from_hf(hf_configs.text_config_from_dict(llm)),
                       image_token_id=IMAGE_MARKER)


def _configs(src: str) -> tuple[dict, dict, dict, dict]:
    top = read_json(os.path.join(src, "config.json"))
    if top is None:
        raise FileNotFoundError(f"{src}/config.json not found (a VILA checkpoint folder is needed)")
    subs = []
    for part in PARTS:
        c = read_json(os.path.join(src, part, "config.json"))
        if c is None:
            raise FileNotFoundError(f"{src}/{part}/config.json not found (VILA folders hold llm/, vision_tower/, mm_projector/)")
        subs.append(c)
    return (top, *subs)


def fresh_configs(cfg: ModelConfig, extra_names: list[str]) -> tuple[dict, dict, dict, dict]:
    vc, feature_layer = hf_configs.tower_to_hf(cfg.vision, extra_names)
    vision = vc.to_dict()
    vision["architectures"] = ["SiglipVisionModel" if cfg.vision.kind == "siglip" else "CLIPVisionModel"]
    llm = hf_configs.decoder_to_hf(cfg.decoder).to_dict()
    llm["architectures"] = ["Qwen2ForCausalLM" if cfg.decoder.qkv_bias else "LlamaForCausalLM"]
    nvila = cfg.projector.type == "mlp_downsample" and cfg.projector.downsample_order == "nvila"
    projector = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
                 "mm_projector_type": "mlp_downsample_2x2_fix" if nvila else cfg.projector.type}
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava", "llm_cfg": llm, "vision_tower_cfg": vision,
           "mm_projector_cfg": projector, "hidden_size": cfg.decoder.hidden_size,
           "mm_hidden_size": cfg.vision.hidden_size, "mm_vision_select_layer": feature_layer,
           "mm_vision_select_feature": "cls_patch" if cfg.vision.select_feature == "cls_patch" else "patch",
           "image_aspect_ratio": "resize", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
           "model_dtype": "torch.bfloat16", "s2": False}  # s2: a VILA-1.5 key (NVILA's configs add dynamic_s2)
    return top, llm, vision, projector


@register("vila")
class Vila(CheckpointFormat):
    import_options = ("downsample_order",)

    def recognizes(self, config: dict, folder: str) -> bool:
        return "llm_cfg" in config

    def read(self, src: str, downsample_order: Optional[str] = None) -> Reading:
        top, llm, vision, projector = _configs(src)
        pre = preprocessor.read(os.path.join(src, "vision_tower"))
        cfg = model_config(top, llm, vision, projector, pre, downsample_order)
        keys = key_functions(cfg.projector.type)
        vision_model = any(i.key.startswith("vision_model.") for i in TensorReader(os.path.join(src, "vision_tower")).infos())
        sources = [engine.Source(os.path.join(src, p), keys[p][0], True, p) for p in PARTS]
        meta = {"vision_model": vision_model, **dict(zip(CONFIG_KEYS, (top, llm, vision, projector))),
                "downsample_order": cfg.projector.downsample_order if cfg.projector.type == "mlp_downsample" else None,
                "side_files": {p: {n: read_json(os.path.join(src, p, n)) for n in SIDE_FILES[p]} for p in PARTS},
                "weights": {p: os.path.basename(TensorReader(os.path.join(src, p)).files[0]) for p in PARTS}}
        return Reading(cfg, sources, meta, os.path.join(src, "llm"))

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        return model_config(*(source[k] for k in CONFIG_KEYS), self._side_files(source, True)["vision_tower"]
                            .get("preprocessor_config.json"), source.get("downsample_order"))

    @staticmethod
    def _side_files(source: dict, own: bool) -> dict:
        return {p: (source.get("side_files", {}).get(p, {}) if own else {}) for p in PARTS}

    def folders(self, ckpt: engine.Ckpt, own: bool) -> list[Folder]:
        cfg, source = ckpt.cfg, ckpt.source
        if self.reuses_source_config(ckpt, own):
            top, llm, vision, projector = (source[k] for k in CONFIG_KEYS)
        else:
            top, llm, vision, projector = fresh_configs(cfg, ckpt.extra_names())
        keys = key_functions(cfg.projector.type, bool(source.get("vision_model", True)) if own else True)
        side = self._side_files(source, own)
        out = [Folder(lambda n: None, top, weights=None)]  # the top config.json
        for part, conf in zip(PARTS, (llm, vision, projector)):
            fresh_pre = part == "vision_tower" and not side[part].get("preprocessor_config.json")
            out.append(Folder(keys[part][1], conf, path=part, select=lambda n, p=part: _part_of(n) == p,
                              keep_extra=lambda n: own or not n.startswith("vila."),
                              fillers=mapping.vision_fillers(cfg) if part == "vision_tower" else None,
                              side_files=side[part], tokenizer=part == "llm",
                              image_processor=preprocessor.image_processor(cfg.vision) if fresh_pre else None))
        return out

    def preprocessing(self, meta: dict) -> Preprocessing:
        """VILA's image_aspect_ratio: resize (to a square), pad (expand2square), else the tower's processor."""
        pre = preprocessor.from_config(self._side_files(meta, True)["vision_tower"].get(preprocessor.IMAGE_PROCESSOR)
                                       or {"image_processor_type": "SiglipImageProcessor"})
        ratio = (meta.get("config") or {}).get("image_aspect_ratio", "resize")
        return Preprocessing(ratio, pre.resample) if ratio in ("resize", "pad") else pre

    def peft_key(self, cfg: ModelConfig, layout: Optional[str] = None):
        return lambda name: "llm." + key if (key := folder_keys.lm_name(name)) else None  # VILA wraps its llm/

    def peft_module_keys(self):
        return [lambda k: folder_keys.lm_key(k[len("llm."):]) if k.startswith("llm.") else None]
