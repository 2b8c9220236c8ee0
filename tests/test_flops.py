"""GMACs and parameters against the paper (fvcore conventions), and the `dvt flops` stage."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from dvt.config import Config, DataConfig, ModelConfig, RunConfig
from dvt.flops import count_cascade, count_flops
from dvt.models import create_model
from dvt.models.attention import Attention
from dvt.models.reuse import FeatureReuse, RelationReuse
from dvt.stages.flops import run


@functools.cache
def cost(backbone: str, grids: tuple[int, ...]):
    # Counts depend on shapes only: skip the (slow) random init of these full-size models.
    with torch.device("meta"):
        model = create_model(backbone, grids=grids, img_size=224, in_chans=3, num_classes=1000)
    model = model.to_empty(device="cpu")
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.detach().zero_()
    return count_cascade(model)


# Reference numbers from the paper and spec §6 (GMACs; T2T-ViT-12 14x14/7x7 also Table 1, spec §7.1;
# DeiT-S/16 and /32 from the MindSpore README, spec §7.6) and spec §1.3 (parameters, millions).
SINGLE_EXIT = [
    ("t2t_vit_12", 14, 1.78, 6.89),
    ("t2t_vit_12", 7, 0.47, None),
    ("t2t_vit_10", 14, 1.53, None),
    ("t2t_vit_14", 14, 4.80, 21.47),
    ("t2t_vit_19", 14, 8.50, None),
    ("t2t_vit_24", 14, 13.69, None),
    ("deit_small", 14, 4.608, 22.05),
    ("deit_small", 7, 1.145, None),
]


@pytest.mark.parametrize("backbone,grid,gmacs,mparams", SINGLE_EXIT)
def test_single_exit_matches_paper(backbone, grid, gmacs, mparams):
    c = cost(backbone, (grid,))
    assert c.stage_gmacs[0] == pytest.approx(gmacs, rel=0.01)
    if mparams is not None:
        assert c.total_params / 1e6 == pytest.approx(mparams, abs=0.005)


def test_our_4x4_t2t_tokenizer_costs_what_the_paper_reports_for_table_1():
    """The official code has no 4x4 first split; ours (T2T_FIRST_SPLIT, dvt/grids.py) lands inside the paper's
    rounded 0.21 GFLOPs (Table 1, spec §7.1), i.e. within 0.205..0.215."""
    assert cost("t2t_vit_12", (4,)).stage_gmacs[0] == pytest.approx(0.21, abs=0.005)


def test_dvt_t2t12_matches_paper():
    # spec §6: cumulative 0.47 / 1.46 / 3.50 GMACs; spec §1.3: 6.97 / 7.71 / 7.67 M, 22.4 M in total.
    c = cost("t2t_vit_12", (7, 10, 14))
    assert c.cumulative_gmacs == pytest.approx([0.47, 1.46, 3.50], rel=0.01)
    assert c.stage_gmacs == pytest.approx([0.472, 0.990, 2.035], rel=0.01)
    assert [p / 1e6 for p in c.params] == pytest.approx([6.97, 7.71, 7.67], abs=0.005)
    assert c.total_params / 1e6 == pytest.approx(22.4, abs=0.05)


def test_reuse_costs_are_charged_to_the_downstream_stage():
    dvt = cost("t2t_vit_12", (7, 10, 14)).stage_gmacs
    plain = [cost("t2t_vit_12", (g,)).stage_gmacs[0] for g in (10, 14)]
    # spec §6: 10x10 plain 0.898 (+0.054 feature, +0.037 relation), 14x14 plain 1.775 (+0.108, +0.152)
    assert plain == pytest.approx([0.898, 1.775], rel=0.01)
    assert dvt[1] - plain[0] == pytest.approx(0.054 + 0.037, rel=0.03)
    assert dvt[2] - plain[1] == pytest.approx(0.108 + 0.152, rel=0.03)


def test_fused_and_explicit_attention_cost_the_same():
    attn = Attention(dim=64, num_heads=4, qkv_bias=True)

    class Wrap(nn.Module):
        def __init__(self, need_logits):
            super().__init__()
            self.attn, self.need_logits = attn, need_logits

        def forward(self, x):
            return self.attn(x, need_logits=self.need_logits)[0]

    x = torch.randn(2, 17, 64)
    fused, explicit = count_flops(Wrap(False), (x,)), count_flops(Wrap(True), (x,))
    assert fused == explicit == 2 * 17 * 64 * 192 + 2 * 17 * 64 * 64 + 2 * 2 * 4 * 17 * 17 * 16


def test_reuse_resampling_is_charged_as_nearest_plus_pooling():
    """The models resample with a matrix, but R is counted as the paper counts it (spec §6): nearest
    upsampling = output numel, adaptive pooling = input numel (T2T-12's 7 -> 14 -> 10 here)."""
    C, n_u = 48, 50  # L*H channels, 7x7 + cls tokens

    class Relations(nn.Module):
        def __init__(self):
            super().__init__()
            self.reuse = RelationReuse(depth=12, num_heads=4, src_grid=7, dst_grid=10)

        def forward(self, x):
            return torch.cat(self.reuse(x), dim=1)

    convs = 2 * (3 * C) * C * n_u * n_u
    keys, queries = C * n_u * 14 * 14, C * 101 * 14 * 14  # upsampled numel, along keys then queries
    assert count_flops(Relations(), (torch.randn(1, C, n_u, n_u),)) == convs + 2 * keys + 2 * queries
    mlp = 5 * n_u * 256 + n_u * 256 * 128 + n_u * 128 * 48
    features = FeatureReuse(dim=256, hidden=128, out=48, src_grid=7, dst_grid=10, norm_eps=1e-6)
    assert count_flops(features, (torch.randn(1, n_u, 256),)) == mlp + 2 * 48 * 14 * 14


def test_unknown_costly_op_is_refused():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=0)

    with pytest.raises(RuntimeError, match="no FLOP rule for aten::cumsum"):
        count_flops(Odd(), (torch.randn(4, 4),))


def test_flops_stage_writes_json(tmp_path, capsys):
    config = Config(data=DataConfig(dataset="synthetic"), model=ModelConfig(backbone="vit_micro"),
                    runs={"dvt": RunConfig(grids=(4, 7, 14))}, runs_dir=str(tmp_path))
    run(config, run="dvt")
    data = json.loads((tmp_path / "dvt" / "flops.json").read_text())
    assert [e["grid"] for e in data["exits"]] == [4, 7, 14]
    stages = [e["stage_gmacs"] for e in data["exits"]]
    assert [e["cumulative_gmacs"] for e in data["exits"]] == pytest.approx([sum(stages[:k + 1]) for k in range(3)])
    assert data["total"]["params"] == sum(e["params"] for e in data["exits"])
    assert data["total"]["gmacs"] == pytest.approx(data["exits"][-1]["cumulative_gmacs"])
    assert "dvt flops: dvt" in capsys.readouterr().out
    assert not list((tmp_path / "dvt").glob(".*tmp"))
