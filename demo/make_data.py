"""Generate the demo's multilingual shape-world dataset and its tokenizer.

    python -m demo.make_data --out demo_data [--seed 0] [--num-train 10000] ...

Writes OUT/align.json (stage 1 captions), OUT/sft.json (stage 2 conversations plus MLAN-style
text-only examples), OUT/images/, the held-out set OUT/eval/<language>/{question,answers}.jsonl
with OUT/eval/images/, and OUT/tokenizer/ (SentencePiece + HF config). A folder that already
holds a complete dataset with the same parameters is reused, not regenerated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tqdm import tqdm

from demo import dataset, languages, world
from tools.train_tokenizer import build_tokenizer


def add_mix_arguments(p: argparse.ArgumentParser) -> None:
    """The data-mix options that `python -m demo` takes and forwards to this generator (`mix_argv`)."""
    d = world.Params()
    p.add_argument("--align-scenes", choices=world.ALIGN_SCENES, default=d.align_scenes,
                   help="stage-1 captions of the one-object images only, or of every image (default %(default)s)")
    p.add_argument("--sft-turns", choices=world.SFT_TURNS, default=d.sft_turns,
                   help="questions per sft image: several (1-4) or one, as the held-out set asks (default %(default)s)")
    p.add_argument("--position-questions", choices=world.POSITION_QUESTIONS, default=d.position_questions,
                   help="position questions about 2-3 object images: any side an object is on, or only a side "
                        "another object is opposite to (default %(default)s)")
    p.add_argument("--contrast-questions", type=float, default=d.contrast_questions,
                   help="share of 2-3 object sft conversations that end with a question about a side another object "
                        "is opposite to (default %(default)s)")
    p.add_argument("--objects-weights", default=d.objects_weights, metavar="W1,W2,W3",
                   help="relative weights of training images with 1, 2 and 3 objects; the held-out set stays "
                        "uniform (default %(default)s)")


def mix_argv(args: argparse.Namespace) -> list[str]:
    """The command-line form of the options `add_mix_arguments` added."""
    return ["--align-scenes", args.align_scenes, "--sft-turns", args.sft_turns, "--objects-weights", args.objects_weights,
            "--position-questions", args.position_questions, "--contrast-questions", str(args.contrast_questions)]


def parse_args(argv=None):
    d = world.Params()
    ap = argparse.ArgumentParser(prog="python -m demo.make_data", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--num-train", type=int, default=d.num_train,
                    help="training images: one sft.json example each, an align.json caption for the single-object ones (default %(default)s)")
    ap.add_argument("--text-only-fraction", type=float, default=d.text_only_fraction,
                    help="share of text-only examples in sft.json (default %(default)s)")
    ap.add_argument("--num-eval", type=int, default=d.num_eval,
                    help="held-out questions per language, balanced over color/shape/count/position (default %(default)s)")
    ap.add_argument("--image-size", type=int, default=d.image_size, help="image side in pixels, 64-96 (default %(default)s)")
    ap.add_argument("--layout", choices=world.LAYOUTS, default=d.layout,
                    help="grid: each shape centred in a cell of a 3x3 grid; free: anywhere, any size, straddling "
                         "patches (default %(default)s)")
    ap.add_argument("--align-positions", action="store_true", help="stage-1 captions name the sides the object is on")
    add_mix_arguments(ap)
    ap.add_argument("--position-weight", type=int, default=d.position_weight,
                    help="weight of a position question among an object's questions, colour and shape 2 (default %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=3000, help="tokenizer vocabulary size (default %(default)s)")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not train the tokenizer")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default %(default)s)")
    ap.add_argument("--verify", action="store_true", help="when reusing, also recheck the content hash")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    params = world.Params(seed=args.seed, num_train=args.num_train, text_only_fraction=args.text_only_fraction,
                          num_eval=args.num_eval, image_size=args.image_size, layout=args.layout,
                          align_positions=args.align_positions, position_weight=args.position_weight,
                          align_scenes=args.align_scenes, sft_turns=args.sft_turns,
                          objects_weights=args.objects_weights, position_questions=args.position_questions,
                          contrast_questions=args.contrast_questions)
    try:
        params.validate()
    except ValueError as e:
        ap.error(str(e))
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.vocab_size < 300:
        ap.error("--vocab-size must be at least 300")
    return args, params


def main(argv=None) -> int:
    args, params = parse_args(argv)
    t0 = time.time()
    if dataset.is_complete(args.out, params, verify=args.verify):
        manifest = dataset.read_manifest(args.out)
        print(f"reusing dataset in {args.out}")
    else:
        with tqdm(total=dataset.num_items(params), desc="generating", unit="ex", disable=args.quiet) as bar:
            manifest = dataset.write_dataset(args.out, params, workers=args.workers, progress=bar.update)
        c = manifest["counts"]
        print(f"wrote {args.out}: align {c['align']}, sft {c['sft']} ({c['sft_text_only']} text-only), "
              f"eval {c['eval_per_language']} x {len(manifest['languages'])} languages ({time.time() - t0:.1f}s)")
    if not args.no_tokenizer:
        t1 = time.time()
        paths = [os.path.join(args.out, n) for n in ("align.json", "sft.json")]
        out, trained = build_tokenizer(paths, os.path.join(args.out, "tokenizer"), args.vocab_size,
                                      split_words=languages.tokenizer_split_words())
        print(f"{'trained' if trained else 'reusing'} tokenizer in {out} ({time.time() - t1:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
