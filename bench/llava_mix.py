"""A generated dataset whose length distribution resembles LLaVA-mix-665k (used by bench/data.py).

Word counts stand in for token counts (the benchmark tokenizes one word = one token). Components
and their shares follow the 665k mix: short-answer VQA grouped per image (VQAv2, GQA, OKVQA,
A-OKVQA, OCR-VQA), region grounding (RefCOCO, VG), LLaVA-Instruct conversations / detail /
reasoning, TextCaps, and ~10% long text-only ShareGPT conversations.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.tokenizer import IMAGE_MARKER, IMAGE_TOKEN

# (name, share, has_image)
COMPONENTS = [
    ("vqa_short", 0.42, True),
    ("grounding", 0.18, True),
    ("instruct_conv", 0.09, True),
    ("instruct_detail", 0.035, True),
    ("instruct_reasoning", 0.11, True),
    ("textcaps", 0.065, True),
    ("sharegpt_text", 0.10, False),
]


def _words(rng, n, tag):
    return " ".join(f"{tag}{int(x)}" for x in rng.integers(0, 5000, max(1, int(n))))


def _turns(rng, kind):
    """-> list of (question words, answer words)."""
    if kind == "vqa_short":
        return [(rng.integers(6, 16), rng.integers(1, 4)) for _ in range(rng.integers(1, 11))]
    if kind == "grounding":
        return [(rng.integers(10, 25), rng.integers(8, 30)) for _ in range(rng.integers(2, 9))]
    if kind == "instruct_conv":
        return [(rng.integers(8, 25), rng.lognormal(4.3, 0.5)) for _ in range(rng.integers(2, 6))]
    if kind == "instruct_detail":
        return [(rng.integers(8, 15), rng.lognormal(4.9, 0.3))]
    if kind == "instruct_reasoning":
        return [(rng.integers(12, 40), rng.lognormal(4.9, 0.45))]
    if kind == "textcaps":
        return [(rng.integers(6, 12), rng.integers(8, 25))]
    n_turns = int(rng.integers(1, 7))
    return [(rng.lognormal(3.8, 1.0), rng.lognormal(5.3, 0.8)) for _ in range(n_turns)]


def generate(n: int, seed: int = 0, image_names: list[str] | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    shares = np.array([c[1] for c in COMPONENTS])
    kinds = rng.choice(len(COMPONENTS), size=n, p=shares / shares.sum())
    recs = []
    for i, k in enumerate(kinds):
        name, _, has_image = COMPONENTS[k]
        conv = []
        for j, (q, a) in enumerate(_turns(rng, name)):
            qt = _words(rng, q, "q")
            if j == 0 and has_image:
                qt = "<image>\n" + qt
            conv += [{"from": "human", "value": qt}, {"from": "gpt", "value": _words(rng, a, "a")}]
        rec = {"id": f"{name}-{i}", "conversations": conv}
        if has_image and image_names:
            rec["image"] = image_names[i % len(image_names)]
        recs.append(rec)
    return recs


def word_encode(conversations):
    """One word = one token (ids from a hash), vicuna-like supervision: answers + EOS; <image> = IMAGE_MARKER."""
    import zlib  # noqa: PLC0415

    toks, mask = [1], [False]
    for turn in conversations:
        sup = turn["from"] == "gpt"
        for j, part in enumerate(turn["value"].split(IMAGE_TOKEN)):
            if j:
                toks.append(IMAGE_MARKER)
                mask.append(False)
            words = part.split()
            toks += [3 + zlib.crc32(w.encode()) % 31000 for w in words]
            mask += [sup] * len(words)
        if sup:
            toks.append(2)
            mask.append(True)
    return np.asarray(toks, np.int32), np.asarray(mask, bool)
