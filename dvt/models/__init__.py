"""DVT model family: Attention -> Block -> Stage (one token grid = one exit) -> Cascade (exits + reuse).

Importing it registers the released cascades with timm (dvt.models.timm_registry).
"""

from dvt.models.backbone import BACKBONES, BackboneSpec
from dvt.models.cascade import Cascade, ReuseState
from dvt.models.from_timm import cascade_from_timm
from dvt.models.official import load_official, official_to_ours, to_official_state_dict
from dvt.models.registry import check_grids, check_reuse, create_model, get_spec, list_models, model_for_run
from dvt.models.stage import Stage, StageOutput
from dvt.models.timm_registry import TimmCascade
from dvt.models.tokenizer import valid_grids

__all__ = [
    "BACKBONES", "BackboneSpec", "Cascade", "ReuseState", "Stage", "StageOutput", "cascade_from_timm", "check_grids",
    "check_reuse",
    "create_model", "get_spec", "list_models", "load_official", "model_for_run", "official_to_ours",
    "to_official_state_dict", "TimmCascade", "valid_grids",
]
