"""The command-line options infer.sample and infer.evaluate share (where the model comes from, how the
prompt is built, how tokens are drawn), their checks, and the model loading they drive."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn


def add_model_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model checkpoint folder (convert output or <run_dir>/final)")
    src.add_argument("--hf", help="HF LlavaForConditionalGeneration or original LLaVA folder (converted in memory)")
    p.add_argument("--vision", help="with --hf of an original LLaVA folder without the tower: the HF CLIP/SigLIP folder")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's tokenizer/ or the --hf folder)")
    p.add_argument("--template", help="chat template (default: from the tokenizer: chatml, llama_3 or vicuna_v1)")
    p.add_argument("--system", help="system prompt (default: the template's; \"\" for none, as the model was "
                                    "trained with data.system)")
    p.add_argument("--image-aspect", choices=["pad", "crop", "resize"], help="image preprocessing (default: from the checkpoint)")


def add_decoding_options(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"at most this many tokens per answer (default {max_new_tokens}). The model's context "
                        "(max_position_embeddings) bounds prompt + answer: a value that leaves no room for a prompt "
                        "exits 2, a prompt that fills the context is an error (prompt_too_long), an answer that "
                        "reaches the context is cut there with a warning")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)


def fail(message: str) -> NoReturn:
    """Bad input the user named (a file, a folder, a model): one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exit 2 with a message naming the option on values no run could use."""
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        parser.error("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")
    for flag, path in (("--checkpoint", args.checkpoint), ("--hf", args.hf), ("--tokenizer", args.tokenizer),
                       ("--vision", args.vision)):
        if path and not os.path.isdir(path):
            parser.error(f"{flag} {path}: no such folder")
    if args.template:
        from vlm_jax.data import templates

        try:
            templates.get_template(args.template)
        except KeyError:
            parser.error(f"--template {args.template}: unknown (known: {', '.join(sorted(templates.TEMPLATES))})")


def load(args: argparse.Namespace):
    """(model, template, sampling config) as the options say; a folder that holds no model, or a
    --max-new-tokens that leaves no room in the model's context, exits 2 with one line."""
    from infer import runner

    try:
        m = runner.load(args.checkpoint, args.hf, args.tokenizer, args.vision)
    except FileNotFoundError as e:
        fail(str(e))
    if args.max_new_tokens >= runner.context_length(m):
        fail(f"--max-new-tokens {args.max_new_tokens}: the model's context is {runner.context_length(m)} tokens "
             "(max_position_embeddings), which leaves no room for a prompt")
    if args.image_aspect:
        m.aspect = args.image_aspect
    from vlm_jax.data import templates

    template = templates.with_system(args.template or runner.default_template(m.tokenizer), args.system)
    return m, template, runner.sampling(m, template, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
