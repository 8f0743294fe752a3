"""`python -m convert {import,export,assemble}`: HF / original-LLaVA checkpoints <-> vlm_jax CKPT folders.

A CKPT folder is what `vlm_jax.checkpoint.save_model_checkpoint` writes (params/, model_config.yaml,
tokenizer/, vlm_jax_model.json) plus, from a conversion, `conversion.json` (source format, layout,
dtypes, source configs) and `extra_tensors.safetensors` (source tensors the model does not use, so
that an export reproduces the source).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from convert import formats
from convert.files import parse_size

EPILOG = """examples:
  python -m convert import --format hf-llava --src llava-1.5-7b-hf --out ckpt/llava15
  python -m convert export --format hf-llava --src ckpt/llava15 --out out/llava15-hf --max-shard-size 2GB
  python -m convert import --format llava --src llava-v1.5-7b --vision clip-vit-large-patch14-336 --out ckpt/l15
  python -m convert export --format llava --src ckpt/l15 --out out/llava-v1.5-7b
  python -m convert export --format llava --projector-only --src ckpt/stage1 --out out/stage1
  python -m convert import --format palo --src MobilePALO-1.7B --vision clip-vit-large-patch14-336 --out ckpt/mpalo
  python -m convert import --format vila --src VILA1.5-3b --out ckpt/vila   (folder with llm/ vision_tower/ mm_projector/)
  python -m convert export --format hf-llava --lora peft --src runs/lora/final --out out/adapter
  python -m convert import --format peft --src out/adapter --base ckpt/llava15 --out ckpt/llava15-lora
  python -m convert assemble --vision clip-vit-large-patch14-336 --llm vicuna-7b-v1.5 \\
      --projector-type mlp2x_gelu --out ckpt/stage0"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{import,export,assemble}")

    def common(sp):
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (the new folder is written beside it and swapped in)")

    imp = sub.add_parser("import", help="HF / original LLaVA checkpoint -> CKPT folder")
    imp.add_argument("--format", required=True, choices=formats.names())
    imp.add_argument("--src", required=True, help="checkpoint folder (config.json + weights) or weights file")
    imp.add_argument("--base", help="peft: the CKPT folder the adapter applies to")
    imp.add_argument("--out", required=True, help="CKPT folder to write")
    imp.add_argument("--vision", help="llava, palo, aligngpt: HF CLIP/SigLIP folder for the vision tower (and its "
                                      "config) when the checkpoint has none")
    imp.add_argument("--downsample-order", choices=("vila1.5", "nvila"),
                     help="vila: VILA-1.5's or NVILA's DownSampleBlock (2x2 grid transposed) when the config does "
                          "not tell (mm_projector_type mlp_downsample without the era's config keys)")
    imp.add_argument("--dtype", default="float32", help="param dtype in the CKPT: float32 (default), bfloat16, "
                                                        "float16 (export restores the source dtypes)")
    common(imp)

    exp = sub.add_parser("export", help="CKPT folder -> HF / original LLaVA checkpoint")
    exp.add_argument("--format", required=True, choices=[n for n in formats.names() if n != "peft"])
    exp.add_argument("--src", required=True, help="CKPT folder")
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    exp.add_argument("--dtype", help="tensor dtype (default: the dtypes of the imported source, else the params')")
    exp.add_argument("--layout", choices=("hf5", "hf4"),
                     help="hf-llava key names (default: as imported, else hf5 = model.language_model.*)")
    exp.add_argument("--weights", choices=("safetensors", "bin"),
                     help="llava, palo: weight file format (default safetensors)")
    exp.add_argument("--vision-tower", choices=("auto", "include", "omit"),
                     help="llava, palo, aligngpt: write the vision tower into the checkpoint (auto: as imported, "
                          "else include)")
    exp.add_argument("--projector-only", action="store_true",
                     help="llava, palo: write a stage-1 mm_projector.bin only")
    exp.add_argument("--lora", choices=("merge", "base", "peft"), default="merge",
                     help="a CKPT with LoRA adapters: merge them into the weights (default), export the base "
                          "weights only, or write a PEFT adapter folder (adapter_config.json + "
                          "adapter_model.safetensors) for the format's model")
    exp.add_argument("--base-model", help="peft: base_model_name_or_path in adapter_config.json")
    common(exp)

    asm = sub.add_parser("assemble", help="HF vision model + HF causal LM (+ stage-1 projector) -> CKPT folder")
    asm.add_argument("--vision", required=True, help="HF CLIP/SigLIP folder (CLIPModel or CLIPVisionModel, SigLIP alike)")
    asm.add_argument("--llm", required=True, help="HF LLaMA/Qwen2 causal LM folder")
    asm.add_argument("--projector", help="stage-1 mm_projector.bin (or .safetensors); default: fresh init")
    asm.add_argument("--projector-type", default="mlp2x_gelu",
                     help="linear | mlpNx_gelu | identity | ldpnet | mlp_downsample")
    asm.add_argument("--select-layer", type=int, default=-2, help="vision hidden state to use (LLaVA default -2)")
    asm.add_argument("--select-feature", choices=("patch", "cls_patch"), default="patch")
    asm.add_argument("--image-token", choices=("sentinel", "add"), default="sentinel",
                     help="sentinel: image placeholder id -200 outside the vocabulary (original LLaVA); "
                          "add: add an <image> token to the tokenizer and vocabulary (HF Llava)")
    asm.add_argument("--seed", type=int, default=0, help="seed of the fresh projector")
    asm.add_argument("--dtype", default="float32")
    asm.add_argument("--out", required=True)
    common(asm)
    return p


def run(args: argparse.Namespace) -> None:
    from convert import api  # heavy imports only after usage errors / --help

    progress = not args.no_progress
    if args.command == "import":
        options = {k: getattr(args, k) for k in ("vision", "base", "downsample_order") if getattr(args, k) is not None}
        api.import_checkpoint(args.format, args.src, args.out, dtype=args.dtype, progress=progress,
                              overwrite=args.overwrite, **options)
    elif args.command == "export":
        options = {k: getattr(args, k) for k in ("layout", "weights", "vision_tower") if getattr(args, k) is not None}
        if args.projector_only:
            options["projector_only"] = True
        try:
            max_shard_bytes = parse_size(args.max_shard_size)
        except ValueError as e:
            raise api.UsageError(f"--max-shard-size: {e}") from None
        api.export_checkpoint(args.format, args.src, args.out, lora=args.lora, dtype=args.dtype,
                              max_shard_bytes=max_shard_bytes, progress=progress, base_model=args.base_model,
                              overwrite=args.overwrite, **options)
    else:
        api.assemble(args.vision, args.llm, args.out, projector=args.projector, projector_type=args.projector_type,
                     select_layer=args.select_layer, select_feature=args.select_feature, image_token=args.image_token,
                     seed=args.seed, dtype=args.dtype, progress=progress, overwrite=args.overwrite)
    print(f"wrote {args.out}", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    """Returns 0 on success, 2 on bad usage or unreadable input (one `error:` line), 1 when a readable
    checkpoint cannot be converted (e.g. a config this converter does not support)."""
    args = build_parser().parse_args(argv)
    from convert.engine import BadInput, ConversionError, UsageError
    from convert.files import BadJson
    from convert.hf_configs import BadConfig, UnsupportedConfig
    from convert.tensor_io import BadWeights

    try:
        run(args)
    except (UsageError, BadInput, BadJson, BadConfig, BadWeights, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConversionError, UnsupportedConfig) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
