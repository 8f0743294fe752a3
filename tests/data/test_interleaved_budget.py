"""A document with more images than the budget: ours keeps the first in document order; `image_info`
follows VILA-1.5's LazyMMC4Dataset (the first of image_info as listed, then sorted by sentence)."""

import numpy as np

from vlm_jax.data import interleaved

DOC = {"text_list": ["s0", "s1", "s2", "s3", "s4"],
       "image_info": [{"image_name": "d.jpg", "matched_text_index": 4}, {"image_name": "a.jpg", "matched_text_index": 0},
                      {"image_name": "c.jpg", "matched_text_index": 3}, {"image_name": "b.jpg", "matched_text_index": 1}]}


def vila15(info: list, max_num_images: int) -> tuple[list, list]:
    """github.com/NVlabs/VILA llava/data/dataset.py LazyMMC4Dataset.__getitem__ (commit 54c9706), the lines
    that choose and order the images (image objects replaced by their names)."""
    images, sentence_ixs = [x["image_name"] for x in info], [x["matched_text_index"] for x in info]
    if len(images) > max_num_images:
        images = images[:max_num_images]
        sentence_ixs = sentence_ixs[:max_num_images]
    images = [images[iii] for iii in np.argsort(sentence_ixs)]
    return images, sentence_ixs


def kept(order: str, budget: int):
    doc, where = interleaved.parse_mmc4(DOC)
    names = interleaved.image_names(DOC, where)
    small, keep = interleaved.keep_images(doc, budget, order)
    return [names[i] for i in keep], small.images_before


def test_document_order_keeps_the_first_in_the_text():
    assert kept("document", 2) == (["a.jpg", "b.jpg"], (1, 1, 0, 0, 0))


def test_image_info_order_is_vila15s_rule():
    for budget in (1, 2, 3, 4):
        names, counts = kept("image_info", budget)
        want, ixs = vila15(DOC["image_info"], budget)
        assert names == want
        assert counts == tuple(int(c) for c in np.bincount(ixs, minlength=5))
    assert kept("image_info", 2) == (["a.jpg", "d.jpg"], (1, 0, 0, 0, 1))
