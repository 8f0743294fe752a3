"""`peft` (import only): a PEFT LoRA adapter folder applied to a CKPT (`--base`); see lora.py.
Adapters exported with `export --lora peft` carry the module names of the chosen format's model."""

from __future__ import annotations

from typing import Optional

from convert import engine, formats, lora
from convert.formats.base import CheckpointFormat, register
from vlm_jax.config import ModelConfig


@register("peft")
class Peft(CheckpointFormat):
    import_options = ("base",)
    exports = False

    def import_checkpoint(self, src: str, out: str, *, dtype: str = "float32", progress: bool = True,
                          base: Optional[str] = None) -> ModelConfig:
        if not base:
            raise engine.UsageError("--format peft needs --base CKPT")
        module_keys = [k for f in formats.all_formats() if f.name != self.name for k in f.peft_module_keys()]
        return lora.import_peft(src, base, out, module_keys)
