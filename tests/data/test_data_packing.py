"""Property tests of the packer: nothing lost, duplicated or reordered; budgets L and M hold."""

import json

import grain
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_jax.data.packing import PackIterDataset

SHAPE = (1, 2, 2, 3)


def make_examples(specs):
    """specs: list of (n_tokens, n_images); token values encode (example, position)."""
    out = []
    for i, (n, k) in enumerate(specs):
        toks = (np.arange(n, dtype=np.int32) + 1000 * (i + 1)).astype(np.int32)
        mask = (np.arange(n) % 3 == 1)
        imgs = np.zeros((k, *SHAPE), np.uint8)
        for j in range(k):
            imgs[j] = (i * 7 + j) % 251  # identifies example and image order
        out.append({"tokens": toks, "label_mask": mask, "images": imgs, "index": i, "truncated": False})
    return out


def pack(examples, L, M, window, **kw):
    ds = grain.MapDataset.source(examples).to_iter_dataset()
    return PackIterDataset(ds, examples.__getitem__, seq_len=L, max_images=M, image_shape=SHAPE,
                           window=window, **kw)




L_M_SPECS = st.tuples(
    st.integers(8, 40), st.integers(1, 4), st.integers(1, 6),
    st.lists(st.tuples(st.integers(2, 40), st.integers(0, 4)), min_size=0, max_size=60),
)


@settings(max_examples=60, deadline=None)
@given(L_M_SPECS)
def test_packing_loses_duplicates_reorders_nothing(args):
    L, M, window, specs = args
    specs = [(min(n, L), min(k, M)) for n, k in specs]
    exs = make_examples(specs)
    rows = list(pack(exs, L, M, window))
    seen = []
    for row in rows:
        assert row["tokens"].shape == (L,) and row["images"].shape == (M, *SHAPE)
        seg = row["segment_ids"]
        n_seg = seg.max(initial=0)
        assert n_seg >= 1
        assert int(row["image_mask"].sum()) <= M
        img = 0
        row_examples = []
        for s in range(1, n_seg + 1):
            idx = np.flatnonzero(seg == s)
            assert np.all(np.diff(idx) == 1)
            i = int(row["tokens"][idx[0]]) // 1000 - 1
            ex = exs[i]
            n, k = len(ex["tokens"]), len(ex["images"])
            np.testing.assert_array_equal(row["tokens"][idx], ex["tokens"])
            np.testing.assert_array_equal(row["positions"][idx], np.arange(n))
            np.testing.assert_array_equal(row["targets"][idx[:-1]], ex["tokens"][1:])
            np.testing.assert_array_equal(row["loss_mask"][idx[:-1]], ex["label_mask"][1:])
            assert not row["loss_mask"][idx[-1]], "last token of a segment is unsupervised"
            # images of this segment follow the previous segments' images, in order
            np.testing.assert_array_equal(row["images"][img : img + k], ex["images"])
            assert row["image_mask"][img : img + k].all()
            img += k
            row_examples.append(i)
        assert row_examples == sorted(row_examples), "segments keep input order within a row"
        assert not row["image_mask"][img:].any() and not row["images"][img:].any()
        used = int((seg > 0).sum())
        assert used <= L and not seg[used:].any() and not row["loss_mask"][used:].any()
        seen += row_examples
    assert sorted(seen) == list(range(len(exs))), "every example exactly once"


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 30), st.integers(0, 2)), min_size=1, max_size=30))
def test_padded_mode_one_example_per_row_in_order(specs):
    exs = make_examples(specs)
    rows = list(pack(exs, 30, 2, window=1, max_segments=1))
    assert len(rows) == len(exs)
    for i, row in enumerate(rows):
        assert row["segment_ids"].max() == 1
        np.testing.assert_array_equal(row["tokens"][: len(exs[i]["tokens"])], exs[i]["tokens"])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 30), st.integers(0, 3)), min_size=1, max_size=50),
       st.integers(0, 40), st.integers(1, 5))
def test_restore_mid_stream_continues_exactly(specs, k, window):
    exs = make_examples(specs)
    ds = pack(exs, 30, 3, window)
    full = list(ds)
    it = iter(ds)
    for _ in range(min(k, len(full))):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    it2 = iter(ds)
    it2.set_state(state)
    rest = list(it2)
    assert len(rest) == len(full) - min(k, len(full))
    for a, b in zip(rest, full[min(k, len(full)):]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_efficiency_on_mixed_lengths():
    rng = np.random.default_rng(0)
    specs = [(int(min(512, max(4, rng.lognormal(4.5, 0.7)))), int(rng.integers(0, 2))) for _ in range(2000)]
    exs = make_examples(specs)
    rows = list(pack(exs, 512, 4, window=32))
    eff = sum(len(e["tokens"]) for e in exs) / (512 * len(rows))
    assert eff > 0.97, eff
