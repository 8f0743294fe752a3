"""TFDS datasets as a random-access record source (`format: tfds`).

    sources: [{format: tfds, path: my_vqa, split: "train[:90%]", data_dir: /data/tfds}]

The dataset must be prepared in the ArrayRecord file format (`file_format="array_record"` when
building), which `tfds.data_source` reads by index without TensorFlow; the Grain pipeline then
mixes, shuffles and shards it per process like any other source. An `image` feature is passed on
still encoded (TFDS's decoding is skipped) and decoded by the pipeline's workers; images of an
`images` Sequence come decoded from TFDS and are re-encoded losslessly as PNG.

An example maps to a LLaVA record by its feature names:
  - `conversations`: a JSON string of [{"from", "value"}] or a Sequence({"from", "value"}) feature, or
    `question` + `answer` texts (one human turn, with "<image>\\n" in front when there is an image);
  - `image` (an Image feature) or `images` (a Sequence of Image);
  - `id`, and every other scalar or text feature, are kept as record fields (e.g. AlignGPT's
    `similarity`).
Conversion never raises: what does not fit becomes a record the parser rejects and counts.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vlm_jax.data.errors import SourceError

IMAGE_KEYS = ("image", "images")


def _plain(v: Any) -> Any:
    """numpy / bytes values of a TFDS example -> JSON-ready Python values."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.ndim else _plain(v.item())
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _png(pixels: np.ndarray) -> bytes:
    """A decoded image (TFDS cannot skip decoding inside a Sequence feature) -> lossless PNG bytes."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8).squeeze(-1) if pixels.shape[-1] == 1 else
                    np.asarray(pixels, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _conversations(ex: dict, num_images: int) -> Any:
    conv = ex.get("conversations")
    if isinstance(conv, dict):  # Sequence({"from", "value"}): columns
        froms, values = _plain(conv.get("from", [])), _plain(conv.get("value", []))
        return [{"from": f, "value": v} for f, v in zip(froms, values)]
    if conv is not None:
        text = _plain(conv)
        try:
            return json.loads(text) if isinstance(text, str) else text
        except ValueError:
            return text  # not JSON: the parser rejects it, naming the record
    if "question" in ex and "answer" in ex:
        q = "<image>\n" * num_images + str(_plain(ex["question"]))
        return [{"from": "human", "value": q}, {"from": "gpt", "value": str(_plain(ex["answer"]))}]
    return None


def to_llava(ex: dict) -> tuple[dict, list[bytes]]:
    """A TFDS example (images still encoded) -> (LLaVA record without images, image bytes)."""
    images: list[bytes] = []
    for key in IMAGE_KEYS:
        v = ex.get(key)
        if v is None:
            continue
        seq = [v] if isinstance(v, (bytes, np.bytes_)) or (isinstance(v, np.ndarray) and v.ndim == 3) else list(v)
        images += [_png(b) if isinstance(b, np.ndarray) else bytes(b) for b in seq]
    record = {k: _plain(v) for k, v in ex.items() if k not in IMAGE_KEYS and k != "conversations"}
    record["conversations"] = _conversations(ex, len(images))
    return record, images


def _skip_image_decoding(features) -> dict:
    """Decoders that leave every top-level Image feature as its encoded bytes (inside a Sequence,
    TFDS's NumPy reader cannot skip decoding: those images are decoded and re-encoded as PNG)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return {name: tfds.decode.SkipDecoding() for name, feat in features.items()
            if isinstance(feat, tfds.features.Image)}


def open_data_source(name: str, split: str, data_dir: str):
    """tfds.data_source with the images left encoded; a clear SourceError when it cannot be opened."""
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy import, only when used)
    except ImportError:
        raise SourceError("format: tfds needs tensorflow-datasets (pip install tensorflow-datasets)") from None
    where = f"tfds {name} (split {split!r}, data_dir {data_dir or 'default'})"
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        if "array_record" not in str(builder.info.file_format).lower():
            raise SourceError(f"{where}: prepared as {builder.info.file_format}, random access needs "
                            "file_format='array_record'")
        return tfds.data_source(name, split=split, data_dir=data_dir or None,
                                decoders=_skip_image_decoding(builder.info.features)), where
    except SourceError:
        raise
    except Exception as e:  # TFDS raises many kinds (not found, bad split, ...): one line naming the dataset
        raise SourceError(f"{where}: cannot open: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
