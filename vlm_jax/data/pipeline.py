"""The Grain input pipeline: sources -> mix -> shuffle -> repeat -> shard -> examples -> pack -> batch.

    loader = make_loader(config, batch_size=8)   # N, K and the tiling from image_layout(config.model)
    batch = next(loader)               # DESIGN.md batch dict of host-local numpy arrays
    state = loader.get_state()         # JSON-serialisable; store it in the checkpoint
    loader.set_state(state)            # continues with exactly the batches that would have followed
    loader.stats()                     # {"examples", "skipped_examples", "skipped_by_reason", ...}

Everything before packing is a Grain MapDataset (random access, so the packer can re-read the
examples of its open rows on restore); parsing/decoding/tokenizing run in `num_workers` threads.
Sharding happens after shuffle+repeat: all processes share one global order and process p takes
positions p, p+P, ..., so each record is read by exactly one process per epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import grain
import numpy as np

from vlm_jax.config import AlignGPTConfig, ConfigError, DataConfig, DataSourceConfig
from vlm_jax.data import examples as ex_lib
from vlm_jax.data import interleaved, templates
from vlm_jax.data.checks import check_data, check_sources
from vlm_jax.data.errors import SkipExample, SourceError, describe
from vlm_jax.data.packing import PackIterDataset, empty_stats
from vlm_jax.data.sources import RawRecord, open_source
from vlm_jax.image_layout import crops_for_tiling, image_layout
from vlm_jax.tokenizer import load_tokenizer


def default_encode(cfg: DataConfig, tokenizer=None) -> ex_lib.EncodeFn:
    """templates.encode with the configured template (and system prompt) and tokenizer."""
    if tokenizer is None:
        if not cfg.tokenizer:
            raise SourceError("data.tokenizer is not set")
        tokenizer = load_tokenizer(cfg.tokenizer)
    template = templates.with_system(cfg.template, cfg.system)

    def encode(conversations):
        if isinstance(conversations, interleaved.Document) and conversations.captions:
            enc, sequences = interleaved.encode_captions(conversations, tokenizer)
            return enc.tokens, enc.label_mask, sequences
        if isinstance(conversations, interleaved.Document):
            enc = interleaved.encode_document(conversations, tokenizer, cfg.interleaved_loss)
        else:
            enc = templates.encode(conversations, template, tokenizer, images_first=not cfg.images_in_place)
        return enc.tokens, enc.label_mask

    return encode


def _source_datasets(sources: Sequence[DataSourceConfig]) -> list[grain.MapDataset]:
    out = []
    for s in sources:
        ds = grain.MapDataset.source(open_source(s))
        if s.max_examples is not None:
            ds = ds[: s.max_examples]
        if len(ds) == 0:
            raise SourceError(f"{s.path}: data source is empty")
        out.append(ds)
    return out


def record_dataset(sources: Sequence[DataSourceConfig], *, shuffle: bool, seed: int,
                   num_epochs: Optional[int], process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The global record order (mixed, shuffled, repeated), then this process's slice of it."""
    return _repeat_and_slice(epoch_dataset(sources, shuffle=shuffle, seed=seed), num_epochs, process_index,
                             process_count)


def epoch_dataset(sources: Sequence[DataSourceConfig], *, shuffle: bool, seed: int) -> grain.MapDataset:
    """One epoch of the global record order (mixed, shuffled)."""
    if not sources:
        raise SourceError("no data sources configured")
    dss = _source_datasets(sources)
    weights = [s.weight for s in sources]  # none, or all positive (data/checks.py)
    if all(w is None for w in weights):
        ds = grain.MapDataset.concatenate(dss) if len(dss) > 1 else dss[0]
        if shuffle:
            ds = ds.shuffle(seed=seed)
    else:
        if shuffle:  # shuffle the components, not the mix, so the proportions hold in every window
            dss = [d.shuffle(seed=seed + i) for i, d in enumerate(dss)]
        ds = grain.MapDataset.mix(dss, weights)
    return ds


def _repeat_and_slice(ds: grain.MapDataset, num_epochs: Optional[int], process_index: int,
                      process_count: int) -> grain.MapDataset:
    ds = ds.repeat(num_epochs)
    if process_count > 1:
        ds = ds[process_index::process_count]
    return ds


def _tagged(raw: RawRecord, fn) -> dict:
    try:
        return fn(raw)
    except SkipExample as e:
        rid = ex_lib.record_id(raw)
        return {"skip": e.reason, "message": describe(raw.file, raw.row, rid, e.reason, e.detail)}


class ExampleCache:
    """`build` with its results kept by source record, the first `limit` records read (never evicted:
    no order to depend on). An example is a pure function of its record, so a hit is what a rebuild
    would give."""

    def __init__(self, build, limit: int):
        self.build, self.limit, self.items = build, limit, {}

    def __call__(self, raw: RawRecord) -> dict:
        key = (raw.file, raw.row, raw.image_folder, raw.source, raw.caption_sequences)
        hit = self.items.get(key)
        if hit is None:
            hit = self.build(raw)
            if len(self.items) < self.limit:
                self.items[key] = hit
        return hit


def _aligngpt_spec(cfg: DataConfig, aligngpt: Optional[AlignGPTConfig]) -> dict:
    if aligngpt is None or not aligngpt.enabled:
        return {}
    return dict(indicator_token_id=aligngpt.indicator_token_id, align_level_field=cfg.align_level_field,
                num_indicators=aligngpt.num_indicators)


def _checked(check, *args) -> None:
    try:
        check(*args)
    except ConfigError as e:
        raise SourceError(str(e)) from None


class DataLoader:
    """Iterator of packed batches with checkpointable state and skip statistics."""

    def __init__(self, cfg: DataConfig, *, batch_size: int, tokens_per_image: int, image_token_id: int,
                 image_size: int, image_mean: Sequence[float], encode: Optional[ex_lib.EncodeFn] = None,
                 tokenizer=None, process_index: int = 0, process_count: int = 1, split: str = "train",
                 sources: Optional[Sequence[DataSourceConfig]] = None, aligngpt: Optional[AlignGPTConfig] = None):
        _checked(check_data, cfg)
        if sources is not None:
            _checked(check_sources, sources, "sources")
        if cfg.image.tiling == "auto":
            raise SourceError("data.image.tiling=auto needs the model: build the loader with make_loader")
        self.batch_size = batch_size
        self.spec = ex_lib.ExampleSpec(
            seq_len=cfg.seq_len, max_images=cfg.max_images, tokens_per_image=tokens_per_image,
            image_token_id=image_token_id, too_long=cfg.too_long, aspect=cfg.image.aspect,
            image_size=image_size, mean=tuple(image_mean), tiling=cfg.image.tiling, resample=cfg.image.resample,
            max_pixels=cfg.image.max_pixels, image_budget_order=cfg.image_budget_order,
            **_aligngpt_spec(cfg, aligngpt))
        self.image_shape = (crops_for_tiling(cfg.image.tiling), image_size, image_size, 3)
        encode = encode or default_encode(cfg, tokenizer)
        train = split == "train"
        if sources is None:
            sources = cfg.sources if train else cfg.eval_sources
        if aligngpt is not None and aligngpt.enabled and any(s.caption_sequences for s in sources):
            raise SourceError("caption_sequences: AlignGPT's indicator (model.aligngpt.enabled) needs one sequence "
                              "per example")
        epoch = epoch_dataset(sources, shuffle=cfg.shuffle and train, seed=cfg.seed)
        num_epochs = cfg.num_epochs if train else 1
        records = _repeat_and_slice(epoch, num_epochs, process_index, process_count)
        # nothing usable in this many records in a row, or in a whole epoch that would be read again: stop
        # with the skip counts instead of spinning (a last epoch just ends; stats() has the counts)
        repeats = num_epochs is None or num_epochs > 1
        per_epoch = max(1, len(epoch) // process_count)
        skip_limit = min(cfg.max_consecutive_skips, per_epoch) if repeats else cfg.max_consecutive_skips
        spec = self.spec

        def build(raw):
            return _tagged(raw, lambda r: ex_lib.build_example(r, encode, spec))

        if cfg.cache_examples > 0:
            build = ExampleCache(build, cfg.cache_examples)
        self.examples = records.map_with_index(lambda i, raw: {**build(raw), "index": i})
        read = grain.ReadOptions(num_threads=max(1, cfg.num_workers), prefetch_buffer_size=max(1, cfg.prefetch))
        window, max_segments = (cfg.pack_window, None) if cfg.packing else (1, 1)
        self.rows = PackIterDataset(
            self.examples.to_iter_dataset(read), self.examples.__getitem__, seq_len=cfg.seq_len,
            max_images=cfg.max_images, image_shape=self.image_shape, window=window,
            max_segments=max_segments, strict=cfg.strict, skip_limit=skip_limit,
            skip_limit_is_epoch=skip_limit < cfg.max_consecutive_skips)
        self._it = iter(self.rows)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = []
        for _ in range(self.batch_size):
            try:
                rows.append(next(self._it))
            except StopIteration:
                break
        if not rows:
            raise StopIteration
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        if len(rows) < self.batch_size:  # last batch of a finite run: pad with empty rows
            pad = self.batch_size - len(rows)
            batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        return batch

    def next_row(self) -> dict:
        """One packed row (no batch axis); shares the iterator and state with `__next__`."""
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)

    def stats(self) -> dict:
        """Counts since the start of the run (restored with the state)."""
        return self._it.stats()


def make_loader(config: Any, *, batch_size: int, tokens_per_image: Optional[int] = None, process_index: Optional[int] = None,
                process_count: Optional[int] = None, split: str = "train", tokenizer=None,
                encode: Optional[ex_lib.EncodeFn] = None, sources=None) -> DataLoader:
    """Loader from the root Config (`config.data`, `config.model`); `batch_size` is per process.

    `tokens_per_image` is N; by default the model's (`image_layout(config.model)`). `data.image.tiling`
    `auto` follows the model's layout; an explicit tiling must give the same number of crops."""
    layout = image_layout(config.model)
    _checked(check_data, config.data, layout)
    if tokens_per_image is None:
        tokens_per_image = layout.tokens_per_image
    data = config.data
    if data.image.tiling == "auto":
        data = dataclasses.replace(data, image=dataclasses.replace(data.image, tiling=layout.tiling))
    if process_index is None or process_count is None:
        import jax  # noqa: PLC0415

        process_index, process_count = jax.process_index(), jax.process_count()
    model = config.model
    return DataLoader(
        data, batch_size=batch_size, tokens_per_image=tokens_per_image, image_token_id=model.image_token_id,
        image_size=data.image.image_size or model.vision.image_size,
        image_mean=data.image.mean or model.vision.image_mean, encode=encode, tokenizer=tokenizer,
        process_index=process_index, process_count=process_count, split=split, sources=sources,
        aligngpt=model.aligngpt)


__all__ = ["DataLoader", "make_loader", "record_dataset", "default_encode", "empty_stats"]
