"""Bad-input handling: a skipped example carries a reason; strict mode turns it into an error."""

from __future__ import annotations

from vlm_jax.config_io import ConfigError

# Every reason an example can be skipped for (stats keys are stable; tests and dashboards use them).
REASONS = (
    "malformed_record",  # unparseable JSON line / record, or wrong field types
    "empty_conversation",
    "bad_role_order",  # roles not human, gpt, human, gpt, ...
    "image_tag_mismatch",  # number of <image> tags != number of images
    "too_many_images",  # more images than the row's image budget M
    "unsafe_image_path",  # image path escapes the image folder
    "missing_image",
    "not_an_image",  # the file is not an image PIL can identify
    "corrupt_record",  # an ArrayRecord chunk that fails its checksum (a damaged shard)
    "corrupt_image",  # identified but fails to decode
    "unsupported_image_mode",  # decoded, but no faithful 8-bit RGB (e.g. float values outside 0..255)
    "image_too_large",  # more pixels than data.image.max_pixels (default PIL's decompression-bomb limit)
    "bad_text",  # text that is not Unicode (a lone surrogate such as \ud800, which JSON allows)
    "too_long",  # longer than seq_len with too_long=drop
    "no_supervised_tokens",  # nothing to learn from (e.g. truncated away)
    "template_error",  # the chat template rejected the conversation
)


class DataError(ValueError):
    """Raised in strict mode (and for unusable sources); names the file and record id."""


class SourceError(DataError, ConfigError):
    """Data no run can use, found while the loader is built (an unreadable or empty file, a damaged
    shard index, a bad data.* value): a config problem, exit 2 in the CLIs. A DataError raised while
    iterating (strict mode, nothing usable left) fails the run instead (exit 1)."""


class SkipExample(Exception):
    """Raised inside example processing; the pipeline counts it under `reason`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.record_id = None  # set when the record parsed far enough to have one


def describe_skips(by_reason: dict) -> str:
    """{"missing_image": 3, "too_long": 1} -> "missing_image: 3, too_long: 1" (most first)."""
    return ", ".join(f"{r}: {n}" for r, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def describe(file: str, row: int, record_id, reason: str, detail: str) -> str:
    rid = f"id {record_id!r}" if record_id is not None else "no id"
    return f"{file}: record {row} ({rid}): {reason}" + (f": {detail}" if detail else "")
