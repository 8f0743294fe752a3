"""`palo`: PALO / MobilePALO checkpoints.

PALO-7B/13B are original-LLaVA checkpoints (mlp2x_gelu); MobilePALO-1.7B is MobileVLM's layout: the
same `LlavaLlamaForCausalLM`-style keys with a MobileLLaMA decoder (a LLaMA) and the `ldpnet` projector
under `model.mm_projector.model.mlp.{1,3}` / `model.mm_projector.model.mb_block.{1,2}.block.*` (projector_keys.py),
`mm_projector_type: ldpnet`. Everything is the `llava` format's except the model class that configs
written from scratch name.
"""

from __future__ import annotations

from convert import engine
from convert.formats.base import register
from convert.formats.llava import Llava


@register("palo")
class Palo(Llava):
    family = ("llava",)

    def recognizes(self, config: dict, folder: str) -> bool:
        return config.get("model_type") == "mobilevlm"

    def fresh_config(self, ckpt: engine.Ckpt) -> dict:
        config = super().fresh_config(ckpt)
        if config.get("mm_projector_type") == "ldpnet":
            config.update(architectures=["MobileLlamaForCausalLM"], model_type="mobilevlm")
        return config
