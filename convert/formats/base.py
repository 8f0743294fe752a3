"""The checkpoint format class and its registry (levanter's `HFCompatConfig` + `register_subclass`).

A format owns what differs between layouts: its key names (checkpoint key <-> canonical name, see
mapping.py), how its configs become a ModelConfig and back, the module names PEFT adapters use in its
model, and how it preprocesses images. What every format shares lives here once: the import skeleton
(read -> stream the tensors -> write the CKPT) and the export skeleton (one or more output folders, each
config + weights + side files), config reuse on export, the LoRA policies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

from convert import engine, lora
from convert.files import copy_tokenizer, tokenizer_config_for_both, write_json
from convert.preprocessor import Preprocessing
from convert.tensor_io import BinShardWriter, ShardedSafetensorsWriter
from vlm_jax.config import ModelConfig

REGISTRY: dict[str, type["CheckpointFormat"]] = {}
SINGLE_FILE = 2**62  # max_shard_bytes that keeps every tensor in one file


def register(name: str):
    """Class decorator: `@register("hf-llava") class HFLlava(CheckpointFormat)`."""

    def add(cls):
        if name in REGISTRY:
            raise ValueError(f"checkpoint format '{name}' is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


def everything(name: str) -> bool:
    return True


@dataclass
class Reading:
    """What a source checkpoint holds, as a format reads it (configs read, no tensor data yet)."""
    cfg: ModelConfig
    sources: list  # [engine.Source]: the weight files and their key -> canonical functions
    meta: dict  # recorded as conversion.json "source" (the format name is added)
    tokenizer: Optional[str] = None  # folder with the tokenizer / processor files


@dataclass
class Folder:
    """One output folder of an export (most formats write one, VILA three)."""
    from_canonical: Callable[[str], Optional[str]]  # canonical name -> key in this folder's weights
    config: Any = None  # config.json: a dict, or a transformers config (save_pretrained); None: no config.json
    path: str = ""  # relative to the export folder
    select: Callable[[str], bool] = everything  # which canonical / extra names go into this folder
    keep_extra: Callable[[str], bool] = everything  # which kept-aside source tensors are written back
    fillers: Optional[dict] = None  # canonical name -> array for tensors the format holds but we do not
    weights: Optional[str] = "safetensors"  # | bin | None (a folder without weights)
    prefix: Optional[str] = None  # weight file prefix (default: model / pytorch_model)
    single_file: bool = False  # ignore --max-shard-size
    side_files: dict = field(default_factory=dict)  # file name -> JSON content (None: skip)
    image_processor: Any = None  # a transformers image processor, saved here (save_pretrained)
    tokenizer: bool = False  # copy the CKPT's tokenizer files here


def same_model(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two configs describe the same network (all that a checkpoint's config files can say)."""
    return (a.vision, a.projector, a.decoder, a.image_token_id) == (b.vision, b.projector, b.decoder, b.image_token_id)


class CheckpointFormat:
    name: ClassVar[str] = ""
    family: ClassVar[tuple[str, ...]] = ()  # formats whose imported configs this one writes back as they were
    import_options: ClassVar[tuple[str, ...]] = ()  # keyword options of read()
    export_options: ClassVar[tuple[str, ...]] = ()  # keyword options of folders()
    exports: ClassVar[bool] = True

    # ------------------------------------------------------------------ what each format defines

    def recognizes(self, config: dict, folder: str) -> bool:
        """Whether a folder with this config.json is in this format (for loading without --format)."""
        return False

    def read(self, src: str, **options) -> Reading:
        raise NotImplementedError

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        """The model the configs recorded at import describe (parts they do not describe taken from `cfg`)."""
        raise NotImplementedError

    def folders(self, ckpt: engine.Ckpt, own: bool, **options) -> list[Folder]:
        """The output folders of an export; `own`: the CKPT was imported from this format (family)."""
        raise NotImplementedError

    def peft_key(self, cfg: ModelConfig, layout: Optional[str] = None) -> Callable[[str], Optional[str]]:
        """canonical name -> module key in the model PEFT wraps for this format."""
        raise NotImplementedError

    def peft_module_keys(self) -> list[Callable[[str], Optional[str]]]:
        """module key -> canonical name, for the module names adapters of this format's model carry."""
        return []

    def preprocessing(self, meta: dict) -> Preprocessing:
        return Preprocessing()

    # ------------------------------------------------------------------ shared

    def owns(self, source: dict) -> bool:
        return source.get("format") in (self.name, *self.family)

    def reuses_source_config(self, ckpt: engine.Ckpt, own: bool) -> bool:
        return own and same_model(self.source_model(ckpt.source, ckpt.cfg), ckpt.cfg)

    def in_memory(self, src: str, **options) -> tuple[dict, ModelConfig, Preprocessing]:
        """Read a checkpoint into numpy params without writing anything."""
        r = self.read(src, **options)
        result = engine.import_weights(r.sources, r.cfg, None, progress=True)
        return result.params, r.cfg, self.preprocessing(r.meta)

    def import_checkpoint(self, src: str, out: str, *, dtype: str = "float32", progress: bool = True,
                          **options) -> ModelConfig:
        r = self.read(src, **options)
        os.makedirs(out, exist_ok=True)
        result = engine.import_weights(r.sources, r.cfg, out, dtype=dtype, progress=progress)
        engine.write_imported(out, result, r.cfg, {"format": self.name, **r.meta}, r.tokenizer)
        return r.cfg

    def export_checkpoint(self, ckpt_dir: str, out: str, *, lora_policy: str = "merge", dtype: Optional[str] = None,
                          max_shard_bytes: int = 5 * 2**30, progress: bool = True, **options) -> None:
        ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
        for folder in self.folders(ckpt, self.owns(ckpt.source), **options):
            write_folder(ckpt, os.path.join(out, folder.path), folder, dtype=dtype, progress=progress,
                         max_shard_bytes=SINGLE_FILE if folder.single_file else max_shard_bytes)

    def export_peft(self, ckpt_dir: str, out: str, *, layout: Optional[str] = None, base_model: Optional[str] = None,
                    dtype: Optional[str] = None) -> list[str]:
        ckpt = engine.read_ckpt(ckpt_dir)
        return lora.export_peft(ckpt, out, self.peft_key(ckpt.cfg, layout), base_model=base_model, dtype=dtype)


def write_folder(ckpt: engine.Ckpt, path: str, folder: Folder, *, dtype: Optional[str], max_shard_bytes: int,
                 progress: bool) -> None:
    os.makedirs(path, exist_ok=True)
    if isinstance(folder.config, dict):
        write_json(os.path.join(path, "config.json"), folder.config)
    elif folder.config is not None:
        folder.config.save_pretrained(path)
    if folder.weights is not None:
        bin_ = folder.weights == "bin"
        engine.export_weights(ckpt, path, folder.from_canonical, select=folder.select, keep_extra=folder.keep_extra,
                              fillers=folder.fillers, dtype=dtype, max_shard_bytes=max_shard_bytes,
                              prefix=folder.prefix or ("pytorch_model" if bin_ else "model"), progress=progress,
                              writer_cls=BinShardWriter if bin_ else ShardedSafetensorsWriter)
    if folder.tokenizer and ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, path)
        tokenizer_config_for_both(path)
    if folder.image_processor is not None:
        folder.image_processor.save_pretrained(path)
    for name, content in folder.side_files.items():
        if content is not None:
            write_json(os.path.join(path, name), content)
