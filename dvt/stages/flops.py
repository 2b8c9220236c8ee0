"""`dvt flops --run R`: runs/<run>/flops.json, the GMACs and parameters of each exit (shapes only: no
checkpoint needed). The counting itself is dvt.flops."""

from __future__ import annotations

from dataclasses import asdict

from dvt.atomic import write_json
from dvt.config import Config
from dvt.flops import count_cascade
from dvt.run_models import model_for_run


def run(config: Config, *, run: str) -> None:
    """Write runs/<run>/flops.json for the model of `run` (no checkpoint needed: shapes only)."""
    from dvt.data import dataset_info

    info = dataset_info(config.data)
    spec = config.run(run)
    model = model_for_run(config, run)
    cost = count_cascade(model)
    out = config.flops_path(run)
    write_json(out, {
        "run": run,
        "backbone": config.backbone_of(run),
        "image_size": info.image_size,
        "in_chans": info.channels,
        "num_classes": info.num_classes,
        "feature_reuse": spec.feature_reuse and model.num_exits > 1,
        "relation_reuse": spec.relation_reuse and model.num_exits > 1,
        "unit": "GMACs (fvcore: one multiply-add = one flop)",
        "exits": [{"exit": k + 1, **asdict(e)} for k, e in enumerate(cost.exits)],
        "total": {"gmacs": cost.total_gmacs, "params": cost.total_params},
    })
    per_exit = " / ".join(f"{g:.4g}" for g in cost.cumulative_gmacs)
    print(f"dvt flops: {run}: cumulative GMACs {per_exit}, {cost.total_params / 1e6:.2f} M parameters -> {out}")
