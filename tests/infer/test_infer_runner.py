"""infer.runner lays out a model's images as its image layout says: the crops the training data gets
for the same image, N placeholders per image (a multiscale-pool model with multi_scale 3 takes a
global view and 3x3 tiles, K = 10)."""

import jax
import numpy as np

from infer import runner
from tests.helpers.infer_tiny import IMAGE_ID, VOCAB, write_image, write_tokenizer
from vlm_jax.config import DecoderConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlm_jax.data import images as img_lib
from vlm_jax.models.vlm import VLM
from vlm_jax.tokenizer import load_tokenizer


def test_multiscale_pool_three_scales_gets_a_global_view_and_3x3_tiles(tmp_path):
    cfg = ModelConfig(
        vision=VisionConfig(kind="siglip", image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=4, hidden_act="gelu_pytorch_tanh", select_layer=-1),
        projector=ProjectorConfig(type="multiscale-pool", multi_scale=3),
        decoder=DecoderConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4),
        image_token_id=IMAGE_ID)
    m = runner.Loaded(VLM(cfg).init_params(jax.random.key(0)), cfg, load_tokenizer(write_tokenizer(str(tmp_path / "tok"))),
                      "pad", "tiny")
    path = write_image(str(tmp_path / "im.png"), seed=1)

    crops = runner.load_image(m, path)
    with open(path, "rb") as f:
        expected = img_lib.crops(img_lib.decode(f.read()), "pad", 28, cfg.vision.image_mean, tiling="3x3")
    assert crops.shape == (10, 28, 28, 3)
    np.testing.assert_array_equal(crops, expected)

    ids = runner.prompt_ids(m, "vicuna_v1", "what is in this image ?", 1)
    assert int((ids == IMAGE_ID).sum()) == 4  # (28 / 14)^2 patch tokens, pooled back onto the global grid
    out = runner.run(m, "vicuna_v1", [(ids, [crops])], runner.sampling(m, "vicuna_v1", max_new_tokens=3))
    assert 1 <= len(out[0]) <= 3
