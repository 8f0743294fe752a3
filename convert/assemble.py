"""A new VLM (the stage-1 starting point) from an HF vision model folder and an HF causal LM folder.

The projector is fresh (seeded) or read from a stage-1 `mm_projector.bin`. The image placeholder is
LLaVA's sentinel -200 by default, or an `<image>` token added to the tokenizer (HF Llava style; the
embedding rows grow only if the new id falls outside the existing, often padded, vocabulary).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from transformers import AutoTokenizer

from convert import engine, folder_keys, hf_configs, preprocessor, projector_keys
from convert.files import copy_tokenizer, read_json
from convert.formats.llava import PROJECTOR
from vlm_jax.config import ModelConfig, ProjectorConfig
from vlm_jax.models import projectors
from vlm_jax.models.vit import num_layers_used
from vlm_jax.tokenizer import IMAGE_MARKER, IMAGE_TOKEN


def projector_key(key: str, projector_type: str = "mlp2x_gelu") -> Optional[str]:
    """Key of a stage-1 mm_projector.bin -> canonical."""
    return projector_keys.to_canonical(key.split(PROJECTOR, 1)[1], projector_type) if PROJECTOR in key else None


def fresh_projector(cfg: ModelConfig, seed: int) -> dict:
    module = projectors.build_projector(cfg, jnp.float32, jnp.float32, name="projector")
    feats = jnp.zeros((1, 1, cfg.vision.num_feature_tokens, cfg.vision.hidden_size), jnp.float32)
    params = jax.jit(lambda k: module.init(k, feats))(jax.random.key(seed))["params"]
    return {"projector": jax.tree.map(np.asarray, nn.unbox(params))}


def _add_image_token(llm: str, tok_dir: str) -> int:
    tok = AutoTokenizer.from_pretrained(llm, trust_remote_code=False, local_files_only=True)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.save_pretrained(tok_dir)
    return tok.convert_tokens_to_ids(IMAGE_TOKEN)


def _grow_vocab(params: dict, cfg: ModelConfig, vocab: int) -> None:
    """New rows (embedding and lm_head) = the mean of the existing ones (as HF's LLaVA conversion)."""
    dec = params["decoder"]
    emb = dec["embed_tokens"]["embedding"]
    extra = vocab - emb.shape[0]
    dec["embed_tokens"]["embedding"] = np.concatenate([emb, np.repeat(emb.mean(0, keepdims=True), extra, 0)])
    if not cfg.decoder.tie_embeddings:
        head = dec["lm_head"]["kernel"]
        dec["lm_head"]["kernel"] = np.concatenate([head, np.repeat(head.mean(1, keepdims=True), extra, 1)], axis=1)
    cfg.decoder.vocab_size = vocab


def assemble(vision: str, llm: str, out: str, *, projector: Optional[str] = None, projector_type: str = "mlp2x_gelu",
             select_layer: int = -2, select_feature: str = "patch", image_token: str = "sentinel", seed: int = 0,
             dtype: str = "float32", progress: bool = True) -> ModelConfig:
    vc = hf_configs.vision_part(hf_configs.load_config(vision))
    pre = preprocessor.read(vision)
    cfg = ModelConfig(vision=hf_configs.vision_from_hf(vc, select_layer, select_feature, pre),
                      projector=ProjectorConfig(type=projector_type),
                      decoder=hf_configs.decoder_from_hf(hf_configs.load_config(llm)),
                      image_token_id=IMAGE_MARKER)
    num_layers_used(cfg.vision)  # validates select_layer
    projectors.get_builder(projector_type)
    sources = [engine.Source(vision, folder_keys.vision_key, False, "vision"),
               engine.Source(llm, folder_keys.lm_key, False, "llm")]
    if projector:
        sources.append(engine.Source(projector, lambda k: projector_key(k, projector_type), False, "projector"))
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights(sources, cfg, out, dtype=dtype, progress=progress,
                                   fresh=None if projector else (lambda: fresh_projector(cfg, seed)))
    tok = os.path.join(out, "tokenizer")
    shutil.rmtree(tok, ignore_errors=True)
    if image_token == "add":
        cfg.image_token_id = _add_image_token(llm, tok)
        if cfg.image_token_id >= cfg.decoder.vocab_size:
            _grow_vocab(result.params, cfg, cfg.image_token_id + 1)
        has_tok = True
    else:
        has_tok = copy_tokenizer(llm, tok)
    source = {"format": "assemble", "vision": os.path.abspath(vision), "llm": os.path.abspath(llm),
              "projector": os.path.abspath(projector) if projector else None, "seed": seed,
              "preprocessor": pre, "generation_config": read_json(os.path.join(llm, "generation_config.json"))}
    engine.write_ckpt(out, result, cfg, source, tokenizer_dir=tok if has_tok else None)
    return cfg
