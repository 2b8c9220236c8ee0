"""DVT model family: Attention -> Block -> Stage (one token grid = one exit) -> Cascade (exits + reuse).

Importing it registers the released cascades with timm (dvt.models.timm_registry).
"""

from dvt.backbones import BACKBONES, BackboneSpec, get_spec, list_models
from dvt.grids import check_grids, valid_grids
from dvt.models.cascade import Cascade, ReuseState
from dvt.models.from_timm import cascade_from_timm
from dvt.models.official import load_official, official_to_ours, to_official_state_dict
from dvt.models.registry import check_reuse, create_model
from dvt.models.stage import Stage, StageOutput
from dvt.models.timm_registry import TimmCascade

__all__ = [
    "BACKBONES", "BackboneSpec", "Cascade", "ReuseState", "Stage", "StageOutput", "cascade_from_timm", "check_grids",
    "check_reuse",
    "create_model", "get_spec", "list_models", "load_official", "official_to_ours",
    "to_official_state_dict", "TimmCascade", "valid_grids",
]
