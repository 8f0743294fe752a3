"""VILA-1.5's MMC4 text and ids, copied from github.com/NVlabs/VILA at commit 54c970676ce96a5f7df372b5d25b2b98057716c2,
llava/data/dataset.py, LazyMMC4Dataset.__getitem__:

- `mmc4_text`: lines 676-725 verbatim but for the image decoding and similarity matrix (an image is its
  name here) and `self.` names made arguments;
- `mmc4_ids`: lines 743-782 (tokenizer_image_token, BOS, the `image_following_text_only` labels) on lists
  instead of tensors.

Kept literal; do not "fix" it. The text lines are unchanged at b760c34 (main, 2025-11-28) but for an
optional `data_args.max_num_images` cap. Driven here by tests.helpers.llava_reference.SlowLlamaTokenizer.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200


def mmc4_text(info, tokenizer, image_following_text_only=False, text_only=False):
    sentences = info["text_list"]
    # kentang-mit@: remove existing <image> tokens in the sentences
    for ix in range(len(sentences)):
        # if this is an html tag, we still preserve its semantic meaning
        sentences[ix] = sentences[ix].replace("<image>", "<IMAGE>")

    images, sentence_ixs = [], []
    if not text_only:
        for sample_image in info["image_info"]:
            sim_ix = sample_image["matched_text_index"]
            images.append(sample_image["image_name"])
            sentence_ixs.append(sim_ix)

    # constrain max num 6 images
    max_num_images = 6
    if len(images) > max_num_images:
        images = images[:max_num_images]
        sentence_ixs = sentence_ixs[:max_num_images]

    # reorder images according to text insertion
    images = [images[iii] for iii in np.argsort(sentence_ixs)]

    # preprocess and tokenize text
    for ix in sentence_ixs:
        sentences[ix] = f"<image>\n{sentences[ix]}"

    if image_following_text_only:
        # use pad tokens to divide sentence pieces
        text = tokenizer.pad_token.join(sentences)
    else:
        text = " ".join(sentences)
    # whitespace cleanup
    text = text.replace("<image> ", "<image>").replace(" <image>", "<image>")
    text = f"{text}{tokenizer.eos_token}"  # add eos token
    return text, images


def mmc4_ids(text, tokenizer, tokenizer_image_token, image_following_text_only=False):
    input_ids = tokenizer_image_token(text, tokenizer)

    # now check the case where the last token is image patch token
    if input_ids[-1] == IMAGE_TOKEN_INDEX:  # need to remove one last image
        last_non_im_patch_indices = [j for j, t in enumerate(input_ids) if t != IMAGE_TOKEN_INDEX][-1] + 1
        input_ids = input_ids[:last_non_im_patch_indices]

    input_ids = (
        [tokenizer.bos_token_id] + input_ids
        if tokenizer.bos_token_id is not None and input_ids[0] != tokenizer.bos_token_id
        else input_ids
    )
    targets = list(input_ids)

    if image_following_text_only:  # keep only text after leading image token
        # remove loss for any token before the first <image> token
        label_idx = 0
        while label_idx < len(targets) and targets[label_idx] != IMAGE_TOKEN_INDEX:
            targets[label_idx] = IGNORE_INDEX
            label_idx += 1

        pad_token = tokenizer.pad_token_id

        pad_token_idxs = [j for j, t in enumerate(targets) if t == pad_token]
        for pad_token_idx in pad_token_idxs:
            token_idx = pad_token_idx + 1
            while token_idx < len(targets) and targets[token_idx] != IMAGE_TOKEN_INDEX:
                targets[token_idx] = IGNORE_INDEX
                token_idx += 1
        # do not train on padding tokens
        targets = [IGNORE_INDEX if t == pad_token else t for t in targets]

    return input_ids, targets
