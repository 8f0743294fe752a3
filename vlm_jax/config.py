"""Typed configuration schema (model, data, training, mesh); loading lives in config_io."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vlm_jax.config_io import (  # noqa: F401  (re-exported: the one import site for configs)
    ConfigError,
    apply_overrides,
    deep_merge,
    dump_yaml,
    from_dict,
    load,
    load_yaml,
    parse_override,
    to_dict,
)
from vlm_jax.tokenizer import IMAGE_MARKER

# ----------------------------------------------------------------------------- model schema


@dataclass
class VisionConfig:
    kind: str = "clip"  # clip | siglip
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # quick_gelu | gelu_pytorch_tanh | gelu
    select_layer: int = -2  # index into hidden states (0 = embeddings), as LLaVA's mm_vision_select_layer
    select_feature: str = "patch"  # patch | cls_patch
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    # How the position embedding parameter starts: `normal` = N(0, 0.02 * scale) as HF initialises
    # CLIP/SigLIP; `sincos2d` = MAE's / big_vision's fixed 2-D sin-cos table times `scale` (a tower
    # kept frozen then has positions its features carry at a chosen strength). Only the initial
    # values differ: the parameter, its HF name and conversion are the same.
    position_init: str = "normal"  # normal | sincos2d
    position_init_scale: float = 1.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def has_class_token(self) -> bool:
        return self.kind == "clip"

    @property
    def num_feature_tokens(self) -> int:
        extra = 1 if (self.has_class_token and self.select_feature == "cls_patch") else 0
        return self.num_patches + extra


@dataclass
class ProjectorConfig:
    type: str = "mlp2x_gelu"  # linear | mlpNx_gelu | identity | ldpnet | mlp_downsample | multiscale-pool
    multi_scale: int = 2  # multiscale-pool: s x s tiles + a global view per image
    downsample_order: str = "vila1.5"  # mlp_downsample: vila1.5 | nvila (VILA's code since NVILA: 2x2 grid transposed)


@dataclass
class DecoderConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None  # None = num_heads (MHA)
    head_dim: Optional[int] = None  # None = hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or {"rope_type": "linear"|"llama3", "factor": ..., "low_freq_factor": ...,
    #  "high_freq_factor": ..., "original_max_position_embeddings": ...}
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen2
    tie_embeddings: bool = False  # Qwen2 small models
    hidden_act: str = "silu"
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class LoRAConfig:
    rank: int = 0  # 0 = no adapters
    alpha: float = 16.0
    dropout: float = 0.0
    # decoder linears whose name fully matches one of these regexes get adapters; LLaVA: all of them
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


NO_INDICATOR = -1  # `align_level` of a position that gets no AlignGPT indicator (data writes it, the model reads it)


@dataclass
class AlignGPTConfig:
    """AlignGPT alignment indicators (off by default; see vlm_jax/models/aligngpt.py)."""

    enabled: bool = False
    num_indicators: int = 8  # levels 0..n-2 are mixed by the gate; level n-1 is the global one added to the mix
    gate_hidden: int = 256  # GatedWeightLayer: Linear(N, 256) -> GELU -> Linear(256, n-1)
    indicator_token_id: int = -300  # placeholder id the data puts right after BOS (outside the vocabulary)


@dataclass
class AttentionBlocks:
    """Tile sizes of the fused attention kernels (model.attention splash | flash_gpu); 0 = the kernel's
    default (splash: 512, as MaxText; GPU flash: 128 forward, 64 backward). Rows are padded to a block."""

    q: int = 0
    kv: int = 0
    q_bwd: int = 0
    kv_bwd: int = 0


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Placeholder id marking image positions in `tokens`. HF LLaVA: the `<image>` token's id in the
    # vocabulary; original LLaVA: the sentinel -200 (outside the vocabulary).
    image_token_id: int = IMAGE_MARKER
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
    # xla (reference einsum) | dot_product (jax.nn.dot_product_attention) | blocked (causal block skipping)
    # | splash (Pallas TPU kernel) | flash_gpu (Pallas GPU kernel) | auto (TPU splash, GPU flash_gpu, CPU blocked)
    attention: str = "xla"
    attention_blocks: AttentionBlocks = field(default_factory=AttentionBlocks)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    aligngpt: AlignGPTConfig = field(default_factory=AlignGPTConfig)


# ----------------------------------------------------------------------------- data schema


@dataclass
class DataSourceConfig:
    path: str = ""  # a file, a glob, a directory of *.array_record shards, or (tfds) a dataset name[:version]
    format: str = "auto"  # auto (by extension) | llava_json | jsonl | array_record | tfds
    split: str = "train"  # tfds only: the split, slicing allowed ("train[:90%]")
    data_dir: str = ""  # tfds only: where the prepared dataset lives (default: TFDS's own default)
    image_folder: str = ""  # image paths in records are relative to this (JSON/JSONL only)
    # Mixture weight. All None = concatenate the sources; otherwise every source needs one and the
    # mix follows the weights exactly (an epoch ends when the first source is used up).
    weight: Optional[float] = None
    name: str = ""  # label for stats / per-source eval (e.g. a language code); default: file stem
    max_examples: Optional[int] = None  # use only the first n records (before shuffling)
    # MMC4-layout records whose sentences are captions, one image each (COYO): every caption with its image is
    # its own sequence (BOS <image>\n caption EOS), as VILA-1.5's LazyCoyoDataset; false = one document
    caption_sequences: bool = False


@dataclass
class ImageConfig:
    aspect: str = "pad"  # pad (LLaVA expand2square with the mean colour) | resize | crop (CLIP)
    image_size: Optional[int] = None  # None = model.vision.image_size
    # padding colour for `pad` (int(255 * mean)); None = model.vision.image_mean. Normalisation
    # happens in the model with model.vision.image_mean/std.
    mean: Optional[tuple[float, ...]] = None
    # auto (follow the model's projector) | none (K=1) | SxS (global view + SxS tiles, row-major; 2x2: K=5)
    tiling: str = "auto"
    resample: str = "bicubic"  # bicubic | bilinear
    # images with more pixels are skipped (image_too_large) from their header, before decoding; the default
    # is PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
    max_pixels: int = 89_478_485


@dataclass
class DataConfig:
    sources: list[DataSourceConfig] = field(default_factory=list)
    eval_sources: list[DataSourceConfig] = field(default_factory=list)
    template: str = "vicuna_v1"
    system: Optional[str] = None  # the system prompt of examples without their own (None: the template's)
    tokenizer: str = ""  # tokenizer folder or SentencePiece .model
    seq_len: int = 2048  # L: tokens per row (images count as their N placeholders)
    max_images: int = 1  # M: image slots per row
    packing: bool = True  # false = one example per row, padded to L
    pack_window: int = 32  # open rows the packer fills best-fit before emitting the fullest (memory: their images)
    image: ImageConfig = field(default_factory=ImageConfig)
    too_long: str = "truncate"  # truncate | drop (samples longer than seq_len)
    strict: bool = False  # true = bad input raises (naming file and record id) instead of skip+count
    # stop with the skip counts when this many records in a row (or a whole epoch) give no example
    max_consecutive_skips: int = 1000
    shuffle: bool = True
    seed: int = 0
    num_epochs: Optional[int] = None  # None = repeat forever
    num_workers: int = 4  # threads parsing / decoding / tokenizing
    prefetch: int = 64  # examples decoded ahead
    # keep up to this many built examples (tokens and decoded images) in memory, by source record, so
    # a small dataset read for many epochs is tokenized and decoded once (0 = off; memory: their images)
    cache_examples: int = 0
    # keep `<image>` tags where they are in conversations (multi-image / interleaved SFT); LLaVA moves them first
    images_in_place: bool = False
    # MMC4-style documents ({"text_list", "image_info"}): supervise all text, or only sentences that follow an
    # image (after_image: VILA's image_following_text_only)
    interleaved_loss: str = "all"
    # a document with more than max_images images keeps: the first in document order (document), or
    # VILA-1.5's LazyMMC4Dataset rule: the first of image_info as listed, then in document order (image_info)
    image_budget_order: str = "document"
    # AlignGPT (model.aligngpt.enabled): "" = the gate computes each indicator (SFT, eval); a record
    # field name (AlignGPT pretraining: "similarity") = each image sample's integer level from the data
    align_level_field: str = ""


# ----------------------------------------------------------------------------- root schema


@dataclass
class MeshConfig:
    data: int = -1  # -1 = fill with the remaining devices
    fsdp: int = 1
    tensor: int = 1
    # logical axis name -> mesh axis (or list of mesh axes, or null = replicated)
    rules: dict = field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "embed": "fsdp",
            "vocab": "tensor",
            "mlp": "tensor",
            "heads": "tensor",
            "kv_heads": "tensor",
            "head_dim": None,
            "layers": None,
            "norm": None,
            "length": None,
        }
    )


# ----------------------------------------------------------------------------- training schema


@dataclass
class OptimizerConfig:
    learning_rate: float = 2e-5  # peak LR of every trainable group without its own entry in group_lr
    group_lr: dict = field(default_factory=dict)  # group -> peak LR, e.g. {projector: 2.0e-5} (mm_projector_lr)
    schedule: str = "cosine"  # cosine | linear | constant (all after linear warmup)
    warmup_ratio: float = 0.03
    warmup_steps: int = -1  # >= 0 overrides warmup_ratio
    min_lr_ratio: float = 0.0  # final LR as a fraction of the peak
    weight_decay: float = 0.0  # not applied to biases and norm scales
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # global-norm clipping; <= 0 disables


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 3  # keep the last K checkpoints
    async_save: bool = True
    export_final: bool = True  # write <run_dir>/final as a model checkpoint folder at the end


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = no periodic evaluation
    num_batches: int = 10  # held-out batches per evaluation
    at_end: bool = True


@dataclass
class LoggingConfig:
    every_steps: int = 1
    progress_bar: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "vlm-jax"
    peak_flops_per_device: float = 0.0  # for MFU; 0 = look up from the device kind


@dataclass
class FakeDataConfig:
    """Deterministic random batches instead of the data pipeline (tests, benchmarks, planning)."""

    enabled: bool = False
    seq_len: int = 64
    max_images: int = 1
    image_fraction: float = 0.75  # share of rows with an image
    segments_per_row: int = 2


@dataclass
class TrainConfig:
    trainable: list[str] = field(default_factory=lambda: ["projector", "decoder"])  # vision|projector|decoder|lora
    global_batch_size: int = 128  # rows per optimizer step, over all hosts
    grad_accum_steps: int = 1  # micro-batches per step (inside the jitted step)
    num_steps: int = -1  # -1 = num_epochs over the training data
    num_epochs: float = 1.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    z_loss: float = 0.0
    loss_vocab_chunk: int = 0  # > 0: cross-entropy from hidden states, lm_head applied in vocab chunks
    # > 0: the lm_head runs only at each row's supervised positions, up to this many per row (a batch
    # with a fuller row takes the full path); pays off when few tokens are supervised, as in SFT
    loss_tokens_per_row: int = 0
    nan_policy: str = "stop"  # stop (keep the last good state, save it, exit 1) | skip (drop the update)
    init_from: Optional[str] = None  # model checkpoint folder or an earlier run dir
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fake_data: FakeDataConfig = field(default_factory=FakeDataConfig)


@dataclass
class DistributedConfig:
    """Multi-host: auto-detected on TPU pods and SLURM, or an explicit coordinator."""

    coordinator_address: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run_dir: str = "runs/default"
    seed: int = 0
    name: str = ""


def load_model_config(path: str) -> ModelConfig:
    """Read a model config YAML (as stored in checkpoints: the ModelConfig mapping itself)."""
    return load(ModelConfig, path)
