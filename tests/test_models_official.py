"""Official DVT checkpoint layout (spec §8.3): export, strict import, clear errors."""

from __future__ import annotations

import functools

import pytest
import torch

from dvt.errors import DvtError
from dvt.models import create_model, load_official, to_official_state_dict

# The paper's models at 224 px: not in `make test-fast`.
pytestmark = pytest.mark.slow


def build(backbone: str, seed: int, reuse: bool = True):
    torch.manual_seed(seed)
    return create_model(backbone, grids=(7, 10, 14), img_size=224, in_chans=3, num_classes=1000,
                        feature_reuse=reuse, relation_reuse=reuse).eval()


def empty(backbone: str):
    """Allocated but never initialised: after loading, every value must come from the checkpoint."""
    with torch.device("meta"):
        model = create_model(backbone, grids=(7, 10, 14), img_size=224, in_chans=3, num_classes=1000)
    return model.to_empty(device="cpu").eval()


@functools.cache
def source(backbone: str):
    """Built once per module (full-size 224 px / 1000-class models); tests only read it."""
    return build(backbone, 0)


@pytest.fixture(scope="module")
def t2t12():
    return source("t2t_vit_12")


def assert_same(source, target, exits: int) -> None:
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x, state_a, state_b = torch.randn(1, 3, 224, 224), None, None
    with torch.no_grad():
        for k in range(exits):
            (a, state_a), (b, state_b) = source.forward_exit(k, x, state_a), target.forward_exit(k, x, state_b)
            assert torch.equal(a, b)


def test_t2t_key_names(t2t12):
    sd = to_official_state_dict(t2t12)
    assert {k.split(".")[0] for k in sd} == {"less_less_token", "less_token", "normal_token"}
    for key in ("less_less_token.tokens_to_token.attention1.w", "less_less_token.tokens_to_token.attention2.mlp.2.bias",
                "less_less_token.tokens_to_token.project.weight", "less_token.pos_embed", "normal_token.cls_token",
                "less_token.blocks.11.feature_resuse_mlp.0.weight", "normal_token.blocks.0.feature_resuse_mlp.1.fc2.bias",
                "normal_token.relation_reuse_conv.2.weight", "normal_token.blocks.5.attn.qkv.weight",
                "normal_token.norm.weight", "normal_token.head.bias"):
        assert key in sd, key
    assert not any("reuse" in k for k in sd if k.startswith("less_less_token."))
    assert not any(k.endswith("attn.qkv.bias") for k in sd)  # T2T blocks have no qkv bias
    assert sd["less_token.blocks.0.norm2.weight"].shape == (256 + 48,)


def test_roundtrip_t2t12_through_a_file(t2t12, tmp_path):
    path = tmp_path / "dvt_t2t_12.pth.tar"
    torch.save({"model_state_dict": to_official_state_dict(t2t12), "flops": [0.47, 1.46, 3.50]}, path)
    assert_same(t2t12, load_official(empty("t2t_vit_12"), path), exits=3)


@pytest.mark.parametrize("backbone", ["t2t_vit_14", "deit_small"])
def test_roundtrip(backbone):
    target = empty(backbone)
    load_official(target, {"model_state_dict": to_official_state_dict(source(backbone))})
    # Equal tensors give equal logits; run the two cheaper exits (the second one with reuse) to show it.
    assert_same(source(backbone), target, exits=2)
    if backbone == "deit_small":
        sd = to_official_state_dict(target)
        assert "less_token.patch_embed.proj.weight" in sd and sd["less_token.patch_embed.proj.weight"].shape[-1] == 23
        assert "normal_token.blocks.0.attn.qkv.bias" in sd


def test_other_architecture_is_refused(t2t12):
    official = to_official_state_dict(t2t12)
    with pytest.raises(DvtError, match=r"t2t_vit_14 .*missing \(90\): .*blocks.12.*wrong shape \(\d+\): "):
        load_official(source("t2t_vit_14"), official)
    deit = to_official_state_dict(source("deit_small"))
    with pytest.raises(DvtError, match=r"missing \(\d+\): .*tokens_to_token.*unexpected \(\d+\): .*qkv.bias"):
        load_official(t2t12, deit)
    no_reuse = build("t2t_vit_12", 0, reuse=False)
    with pytest.raises(DvtError, match=r"unexpected \(\d+\): .*(feature_resuse_mlp|relation_reuse_conv)"):
        load_official(no_reuse, official)
    with pytest.raises(DvtError, match="not found"):
        load_official(t2t12, "/nonexistent/dvt.pth.tar")
    small = create_model("vit_micro", grids=(4, 7), img_size=28, in_chans=1, num_classes=10)
    with pytest.raises(DvtError, match="exits \\[7, 10, 14\\]"):
        to_official_state_dict(small)
