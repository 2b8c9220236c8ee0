"""The released cascades in timm's registry (issue #18, item 2): built by name, loaded from an official
checkpoint file through timm's own pretrained machinery, and the same model as ours."""

from __future__ import annotations

import pytest
import timm
import torch

import dvt.models  # noqa: F401  (registers the models with timm)
from dvt.models import create_model, to_official_state_dict

# The paper's models at 224 px: not in `make test-fast`.
pytestmark = pytest.mark.slow


def ours(backbone: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(backbone, grids=(7, 10, 14), img_size=224, in_chans=3, num_classes=1000).eval()


def test_the_three_released_cascades_are_registered():
    assert timm.list_models("dvt_*") == ["dvt_deit_small", "dvt_t2t_vit_12", "dvt_t2t_vit_14"]
    model = timm.create_model("dvt_t2t_vit_14")
    assert model.grids == (7, 10, 14) and model.spec.name == "t2t_vit_14"
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert timm.data.resolve_data_config({}, model=model)["interpolation"] == "bicubic"


def test_an_official_checkpoint_loads_through_timm_and_gives_our_logits(tmp_path):
    reference = ours("t2t_vit_12")
    path = tmp_path / "DVT_T2t_vit_12.pth.tar"  # the released layout: renamed keys under model_state_dict
    torch.save({"model_state_dict": to_official_state_dict(reference), "epoch": 300}, path)
    model = timm.create_model("dvt_t2t_vit_12", pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = reference(x)
        every = model.forward_exits(x)
        last = model(x)
    assert len(every) == 3
    for got, expected in zip(every, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(last, want[-1], rtol=0, atol=0)  # timm's tools see the whole cascade


def test_other_classes_and_channels_keep_everything_but_heads_and_stems(tmp_path):
    """num_classes 10 and 1-channel input from an ImageNet file: timm replaces the three heads and folds
    the three patch embeddings' RGB weights into one channel; everything else is the file's."""
    reference = ours("deit_small")
    path = tmp_path / "checkpoint.pt"  # our own format: the state dict under "model"
    torch.save({"model": reference.state_dict()}, path)
    model = timm.create_model("dvt_deit_small", pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay={"file": str(path)})
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for k in got:
        if ".head." in k:
            assert got[k].shape[0] == 10, k
        elif k.endswith("patch_embed.proj.weight"):
            torch.testing.assert_close(got[k], want[k].sum(dim=1, keepdim=True), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got[k], want[k]), k
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 10)


def test_pretrained_without_a_file_says_where_the_authors_publish_it():
    """timm would log "No pretrained weights exist" and go on with random weights."""
    from dvt.errors import DvtError
    from dvt.released import RELEASED

    for name, file in (("dvt_t2t_vit_12", "DVT_T2t_vit_12.pth.tar"), ("dvt_deit_small", "DVT_Deit_small.pth.tar")):
        with pytest.raises(DvtError, match=rf"{name}: pretrained=True needs .* publish {file} at https://cloud\.tsinghua"):
            timm.create_model(name, pretrained=True)
        assert RELEASED[file].timm_name == name
