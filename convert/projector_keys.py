"""Projector module names of the original projects <-> canonical projector names (mapping.py).

Keys are relative to the projector module (`model.mm_projector.` in LLaVA/PALO/AlignGPT,
`layers.` in VILA's mm_projector folder, `multi_modal_projector.adapter.` in Centurio):
  linear          weight, bias                                   (LLaVA nn.Linear)
  mlpNx_gelu      0.*, 2.*, ...                                  (LLaVA nn.Sequential)
  ldpnet          model.mlp.{1,3}.*, model.mb_block.{1,2}.block.{0.0,0.1,1.fc1,1.fc2,2.0,2.1}.*
                  (MobileVLM's / PALO's LDPNetProjector, whose LDPBlock is `self.model`; read without the
                  `model.` too, as this converter exported them before it followed MobileVLM)
  mlp_downsample  1.* (LayerNorm), 2.*, 4.*                      (VILA: DownSampleBlock, LN, Linear, GELU, Linear)
  multiscale-pool linear_1.*, linear_2.*                         (Centurio)
"""

from __future__ import annotations

import re
from typing import Optional

_LDP_BLOCK = {"block.0.0": "dw_conv", "block.0.1": "dw_norm", "block.1.fc1": "se_fc1", "block.1.fc2": "se_fc2",
              "block.2.0": "project", "block.2.1": "project_norm"}


def modules(projector_type: str) -> dict[str, str]:
    """Source module name -> canonical module name."""
    if projector_type == "linear":
        return {"": "projector.linear_1"}
    if projector_type == "identity":
        return {}
    if projector_type == "ldpnet":
        out = {"model.mlp.1": "projector.linear_1", "model.mlp.3": "projector.linear_2"}
        for i in (1, 2):
            out.update({f"model.mb_block.{i}.{k}": f"projector.block_{i}.{v}" for k, v in _LDP_BLOCK.items()})
        return out
    if projector_type == "mlp_downsample":
        return {"1": "projector.norm", "2": "projector.linear_1", "4": "projector.linear_2"}
    if projector_type == "multiscale-pool":
        return {"linear_1": "projector.linear_1", "linear_2": "projector.linear_2"}
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not m:
        raise ValueError(f"projector type '{projector_type}' has no checkpoint key names")
    return {str(2 * k): f"projector.linear_{k + 1}" for k in range(int(m.group(1)))}


_READ_ALSO = {"ldpnet": lambda module: "model." + module}  # older names -> the original module names


def to_canonical(rest: str, projector_type: str) -> Optional[str]:
    module, _, param = rest.rpartition(".")
    names = modules(projector_type)
    canon = names.get(module)
    if canon is None and projector_type in _READ_ALSO:
        canon = names.get(_READ_ALSO[projector_type](module))
    return f"{canon}.{param}" if canon else None


def from_canonical(name: str, projector_type: str) -> Optional[str]:
    module, _, param = name.rpartition(".")
    inverse = {v: k for k, v in modules(projector_type).items()}
    if module not in inverse:
        return None
    return f"{inverse[module]}.{param}" if inverse[module] else param
