"""VILA-1.5's COYO text path, copied from github.com/NVlabs/VILA at commit 54c970676ce96a5f7df372b5d25b2b98057716c2:

- `tokenizer_image_token`: llava/mm_utils.py (lines 335-360), verbatim but for returning a list;
- `coyo_getitem`: llava/data/dataset.py, LazyCoyoDataset.__getitem__ (lines 888-963) with the image
  decoding dropped (the record's images are counted instead) and `self.` names made arguments;
- `collate`: llava/data/dataset.py, DataCollatorForSupervisedDataset.__call__, its input_ids / labels part
  (lines 2018-2065): a COYO item's list of sequences becomes that many batch rows.

Kept literal; do not "fix" it. Driven here by tests.helpers.llava_reference.SlowLlamaTokenizer.
"""

from __future__ import annotations

import copy

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None, lstrip=False):
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if lstrip:
        offset = 1
    else:
        if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
            offset = 1
            input_ids.append(prompt_chunks[0][0])

    for chunk_id, x in enumerate(insert_separator(prompt_chunks, [image_token_index] * (offset + 1))):
        if chunk_id == 0 and lstrip:
            input_ids.extend(x)
        else:
            input_ids.extend(x[offset:])

    if return_tensors is not None:
        if return_tensors == "pt":
            return torch.tensor(input_ids, dtype=torch.long)
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return input_ids


def coyo_getitem(info_list, tokenizer):
    CONCAT_SAMPLES = False

    text_list = []
    image_list = []

    for sample in info_list:
        caption_key = (
            "text" if "text" in sample else "caption"
        )  # kentang-mit@: remove existing <image> tokens in the sentences
        # kentang-mit@: remove existing <image> token.
        # if this is an html tag, we still preserve its semantic meaning
        sample[caption_key] = sample[caption_key].replace("<image>", "<IMAGE>")
        text_list.append(DEFAULT_IMAGE_TOKEN + "\n" + sample[caption_key] + tokenizer.eos_token)
        image_list.append(sample.get("image"))  # (VILA decodes the image here)

    if CONCAT_SAMPLES:
        raise NotImplementedError  # (VILA's dead branch: one tokenizer() call over the joined captions)
    else:
        input_ids = [
            tokenizer_image_token(
                prompt,
                tokenizer,
                return_tensors="pt",
            )
            for prompt in text_list
        ]

    targets = copy.deepcopy(input_ids)
    # mask image tokens is unnecessary for llava-1.5
    # targets[targets == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    for i in range(len(targets)):
        targets[i][targets[i] == tokenizer.pad_token_id] = IGNORE_INDEX

    return dict(input_ids=input_ids, labels=targets, image=image_list)


def collate(instances, tokenizer):
    input_ids, labels, images = [], [], []
    for instance in instances:
        if not isinstance(instance["input_ids"], list):
            input_ids.append(instance["input_ids"])
        else:
            input_ids += instance["input_ids"]
        if not isinstance(instance["labels"], list):
            labels.append(instance["labels"])
        else:
            labels += instance["labels"]
        if not isinstance(instance["input_ids"], list):
            images.append(instance["image"])
        else:
            images.extend([[im] for im in instance["image"]])  # cur_image.chunk(cur_image.size(0), 0)

    input_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=tokenizer.pad_token_id)
    labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    input_ids = input_ids[:, : tokenizer.model_max_length]
    labels = labels[:, : tokenizer.model_max_length]
    return dict(input_ids=input_ids, labels=labels, attention_mask=input_ids.ne(tokenizer.pad_token_id), image=images)
