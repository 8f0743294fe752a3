"""Two TFDS builders for the `format: tfds` tests, prepared in the ArrayRecord file format with no
network and no TensorFlow. Run as a script so that the reading test process never imports them
(as in real use, where the dataset was prepared elsewhere):

    python -m tests.helpers.tfds_builders DATA_DIR RECORDS.json IMAGE_FOLDER

`llava_style` holds LLaVA records (conversations as JSON text, images as a Sequence of Image, the
image files' own bytes); `vqa_style` one question/answer/image per example."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow_datasets as tfds


class LlavaStyle(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, records=(), image_folder="", **kw):
        self.records, self.image_folder = list(records), image_folder
        super().__init__(**kw)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "conversations": tfds.features.Text(),
            "images": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3)))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for rec in self.records:
            names = rec.get("image", [])
            names = [names] if isinstance(names, str) else names
            images = [open(os.path.join(self.image_folder, n), "rb").read() for n in names]
            yield rec["id"], {"id": rec["id"], "conversations": json.dumps(rec["conversations"]), "images": images}


class VqaStyle(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, image_folder="", **kw):
        self.image_folder = image_folder
        super().__init__(**kw)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(), "answer": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)), "score": np.float32}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(4, 100)}

    def _generate_examples(self, n, start=0):
        for i in range(start, start + n):
            path = os.path.join(self.image_folder, f"img{i % 7}.png")
            yield str(i), {"question": f"what is v{i} ?", "answer": f"vqa{i}", "image": open(path, "rb").read(),
                           "score": i / 10}


def main(argv) -> None:
    data_dir, records, images = argv
    with open(records) as f:
        recs = json.load(f)
    LlavaStyle(recs, images, data_dir=data_dir, file_format="array_record").download_and_prepare()
    VqaStyle(images, data_dir=data_dir, file_format="array_record").download_and_prepare()


if __name__ == "__main__":
    main(sys.argv[1:])
