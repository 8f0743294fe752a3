"""HF / PyTorch checkpoints <-> vlm_jax CKPT folders. The public API is convert.api; the CLI is
`python -m convert` (convert/cli.py); each checkpoint format is one class in convert/formats/."""
