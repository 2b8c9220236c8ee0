"""The model family: registry, shapes, errors, step API, reuse-off equivalence, timm parity."""

from __future__ import annotations

import functools

import pytest
import timm
import torch

import dvt.models.attention as attention_module
from dvt.config import Config, DataConfig, ModelConfig, RunConfig, SyntheticConfig
from dvt.errors import DvtError
from dvt.grids import patch_geometry
from dvt.models import (
    Cascade,
    ReuseState,
    check_reuse,
    cpu_paths,
    create_model,
    list_models,
    valid_grids,
)
from dvt.run_models import model_for_run

SMALL = ("vit_micro", "vit_mini", "vit_tiny")


def micro(grids=(4, 7, 14), **kw) -> Cascade:
    torch.manual_seed(0)
    return create_model("vit_micro", grids=grids, img_size=28, in_chans=1, num_classes=10, **kw).double().eval()


def images(n: int = 6, size: int = 28, chans: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_list_models():
    assert list_models() == ["t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14", "t2t_vit_19", "t2t_vit_24",
                             "deit_small", "vit_micro", "vit_mini", "vit_tiny", "vit_micro_ss", "vit_micro_ss_d2",
                             "vit_micro_ss_d3", "vit_micro_ss_d6", "vit_micro_ss_d8"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("size,chans,grids", [(28, 1, (4, 7, 14)), (32, 3, (4, 8, 16))])
def test_small_models_forward_backward(name, size, chans, grids):
    model = create_model(name, grids=grids, img_size=size, in_chans=chans, num_classes=10, drop_path_rate=0.1)
    model.train()
    outs = model(torch.randn(2, chans, size, size))
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * len(grids)
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
# vit_micro_ss (and its depths) makes other grids (test_soft_split_tokenizer_geometry_and_training).
@pytest.mark.parametrize("name", [n for n in list_models() if n not in SMALL and not n.startswith("vit_micro_ss")])
def test_imagenet_models_forward_backward(name):
    # Two exits keep it quick while still exercising both kinds of reuse at 224 px.
    model = create_model(name, grids=(7, 10), img_size=224, in_chans=3, num_classes=1000)
    outs = model(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 1000), (1, 1000)]
    (outs[0].sum() + outs[1].sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_patch_geometry_reproduces_deit_and_documented_grids():
    assert [patch_geometry(224, g) for g in (7, 10, 14)] == [(32, 0), (23, 3), (16, 0)]
    assert valid_grids("patch", 28) == [1, 2, 3, 4, 5, 6, 7, 10, 14, 28]
    assert valid_grids("patch", 32) == [1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 32]
    assert valid_grids("t2t", 224) == [4, 7, 10, 14]


def test_soft_split_tokenizer_geometry_and_training():
    from dvt.grids import soft_split_geometry
    from dvt.models.tokenizer import SoftSplitEmbed

    assert valid_grids("soft_split", 56) == [1, 2, 3, 4, 5, 6, 7, 14, 28]
    assert valid_grids("soft_split", 28) == [1, 2, 3, 5, 7, 14]
    # The first split's stride is tied to the grid: a coarse grid compresses its pixels early
    # (T2T-ViT's 7x7 exit splits with stride 8, its 14x14 exit with stride 4).
    assert [soft_split_geometry(56, g) for g in (3, 5, 7)] == [(20, 10, 7), (12, 6, 5), (8, 4, 2)]
    for g in (3, 5, 7):
        embed = SoftSplitEmbed(img_size=56, grid=g, in_chans=1, embed_dim=16, token_dim=8)
        assert embed(torch.randn(2, 1, 56, 56)).shape == (2, g * g, 16)
    with pytest.raises(DvtError, match=r"grid 8 .*56x56.*vit_micro_ss.*valid grids at this size: 1-7, 14, 28"):
        create_model("vit_micro_ss", grids=(3, 8), img_size=56, in_chans=1, num_classes=10)
    model = create_model("vit_micro_ss", grids=(3, 5, 7), img_size=56, in_chans=1, num_classes=10)
    outs = model(torch.randn(2, 1, 56, 56))
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * 3
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Fig. 6's family: the same ViT at other depths, one exit on the finest grid.
    for depth in (2, 3, 6, 8):
        deeper = create_model(f"vit_micro_ss_d{depth}", grids=(7,), img_size=56, in_chans=1, num_classes=10)
        assert len(deeper.exits[0].blocks) == depth and deeper(torch.randn(2, 1, 56, 56))[0].shape == (2, 10)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(DvtError, match="unknown backbone 'resnet50'.*t2t_vit_12.*deit_small.*vit_micro"):
        create_model("resnet50", grids=(7,), img_size=224, in_chans=3, num_classes=10)


def test_impossible_grid_names_size_and_valid_grids():
    with pytest.raises(DvtError, match=r"grid 8 .*28x28.*valid grids at this size: 1-7, 10, 14, 28"):
        create_model("vit_micro", grids=(4, 8), img_size=28, in_chans=1, num_classes=10)
    with pytest.raises(DvtError, match=r"grid 9 .*224x224.*t2t_vit_12.*: 4, 7, 10, 14"):
        create_model("t2t_vit_12", grids=(9,), img_size=224, in_chans=3, num_classes=10)
    with pytest.raises(DvtError, match="growing strictly"):
        create_model("vit_micro", grids=(7, 4), img_size=28, in_chans=1, num_classes=10)


def test_reuse_flags_on_one_exit():
    # Lenient build: a one-exit model is a plain ViT whatever the flags say.
    model = create_model("vit_micro", grids=(7,), img_size=28, in_chans=1, num_classes=10)
    assert not any("reuse" in k for k in model.state_dict())
    check_reuse((7,), True, True, strict=False)
    check_reuse((4, 7), True, True)
    with pytest.raises(DvtError, match="feature_reuse and relation_reuse asked for a single-exit model"):
        check_reuse((7,), True, True)


def test_model_for_run_uses_dataset_and_run():
    config = Config(data=DataConfig(dataset="synthetic", synthetic=SyntheticConfig(image_size=32, channels=3,
                                                                                  classes=7)),
                    model=ModelConfig(backbone="vit_micro"),
                    runs={"dvt": RunConfig(grids=(4, 8), relation_reuse=False)})
    model = model_for_run(config, "dvt")
    assert model.grids == (4, 8) and model.exits[1].has_feature_reuse and not model.exits[1].has_relation_reuse
    assert model(torch.randn(2, 3, 32, 32))[1].shape == (2, 7)


def test_reuse_off_exits_equal_independent_models():
    model = micro(feature_reuse=False, relation_reuse=False)
    x = images()
    outs = model(x)
    for k, grid in enumerate(model.grids):
        single = micro(grids=(grid,))
        single.exits[0].load_state_dict(model.exits[k].state_dict())  # strict: same keys, no reuse modules
        torch.testing.assert_close(single(x)[0], outs[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("feature_reuse,relation_reuse", [(True, True), (True, False), (False, True)])
def test_step_api_equals_full_forward_also_on_subsets(feature_reuse, relation_reuse):
    model = micro(feature_reuse=feature_reuse, relation_reuse=relation_reuse)
    x = images(8)
    full = model(x)
    state, rows = None, torch.arange(8)
    for k in range(model.num_exits):
        logits, state = model.forward_exit(k, x, state)
        torch.testing.assert_close(logits, full[k][rows], rtol=0, atol=1e-12)
        keep = logits[:, 0] < logits[:, 0].median()  # any data-dependent subset
        x, state, rows = x[keep], state.select(keep), rows[keep]
    assert state == ReuseState(exit=2)  # nothing is kept after the last exit


def test_state_holds_only_what_the_next_exit_reuses():
    x = images(2)
    _, state = micro(feature_reuse=True, relation_reuse=False).forward_exit(0, x)
    assert state.features.shape == (2, 17, 64) and state.relations is None
    _, state = micro(feature_reuse=False, relation_reuse=True).forward_exit(0, x)
    assert state.features is None and state.relations.shape == (2, 4 * 4, 17, 17)
    _, state = micro(feature_reuse=False, relation_reuse=False).forward_exit(0, x)
    assert state.features is None and state.relations is None
    with pytest.raises(ValueError, match="pass the state"):
        micro().forward_exit(1, x, None)
    with pytest.raises(ValueError, match="select the same rows"):
        micro().forward_exit(1, x[:1], micro().forward_exit(0, x)[1])
    assert micro().forward_exit(0, x)[1][:1].features.shape == (1, 17, 64)  # state[idx] == state.select(idx)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\)"):
        micro().forward_exit(0, images(2, size=32))


def test_attention_kernel_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fused = functools.partial(attention_module.use_fused_kernel, bias_grad=False)
    # Always fused on the GPU; on the CPU only where it measured faster.
    assert fused(device=cuda, tokens=10, bias=True, grad=True)
    assert not fused(device=cpu, tokens=26, bias=False, grad=False)
    assert fused(device=cpu, tokens=50, bias=False, grad=False)
    assert fused(device=cpu, tokens=50, bias=True, grad=False)
    assert not fused(device=cpu, tokens=37, bias=True, grad=False)
    # A bias the explicit path may add into in place spares a copy: explicit up to 63 tokens.
    assert not fused(device=cpu, tokens=50, bias=True, grad=False, bias_in_place=True)
    assert fused(device=cpu, tokens=64, bias=True, grad=False, bias_in_place=True)
    assert not fused(device=cpu, tokens=50, bias=False, grad=True)
    assert fused(device=cpu, tokens=197, bias=False, grad=True)
    assert not attention_module.use_fused_kernel(device=cpu, tokens=197, bias=True, grad=True, bias_grad=True)


def test_fused_attention_only_where_it_is_faster(monkeypatch):
    calls = []
    fused = attention_module.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return fused(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        # 4x4 and 7x7 exits feed relations on (explicit); the 14x14 exit (197 tokens) is fused with
        # the reuse bias as its mask.
        micro()(images(2))
        assert calls == [True] * 4
        calls.clear()
        micro(relation_reuse=False)(images(2))  # 17 tokens explicit; 50 and 197 fused, without a mask
        assert calls == [False] * 8
    calls.clear()
    micro()(images(2))  # with autograd, the 14x14 exit's bias needs a gradient -> explicit on the CPU
    assert calls == []


@pytest.mark.parametrize("width", [1, 10, 15, 16, 26])
def test_softmax_rows_equals_torch_softmax_with_gradients(width):
    # Short rows take a hand-written path on the CPU (see cpu_paths.SOFTMAX_SHORT_ROW); values and gradients
    # must be torch's, with large logits (no overflow) and in every autograd mode.
    x = torch.randn(3, 4, 5, width, dtype=torch.float64) * 40
    expected = x.softmax(dim=-1)
    with torch.inference_mode():
        torch.testing.assert_close(attention_module.softmax_rows(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(attention_module.softmax_rows(x), expected)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn_like(x)
    (attention_module.softmax_rows(a) * weights).sum().backward()
    (b.softmax(dim=-1) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert not attention_module.softmax_rows(x).isnan().any()


@pytest.mark.parametrize("tokens", [10, 26])
def test_explicit_attention_equals_the_fused_one_and_returns_its_logits(tokens, monkeypatch):
    torch.manual_seed(0)
    attn = attention_module.Attention(dim=32, num_heads=4, qkv_bias=True).double()
    x, bias = torch.randn(3, tokens, 32, dtype=torch.float64), torch.randn(3, 4, tokens, tokens, dtype=torch.float64)
    # Sequences this short take the explicit path on the CPU; make the fused kernel the choice so that
    # both paths are compared.
    for case in ("INFERENCE", "WITH_BIAS", "BIAS_IN_PLACE", "TRAINING"):
        monkeypatch.setattr(cpu_paths, f"FUSED_MIN_TOKENS_{case}", 0)
    spy = []
    fused_kernel = attention_module.F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        spy.append(1)
        return fused_kernel(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counted)
    for b in (None, bias):
        spy.clear()
        fused, none = attn(x, bias=b)
        assert spy == [1]
        explicit, logits = attn(x, bias=b, need_logits=True)
        assert none is None
        torch.testing.assert_close(explicit, fused)
        q, k, _ = attn.qkv(x).reshape(3, tokens, 3, 4, 8).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(logits, q @ k.transpose(-2, -1) / 8**0.5 + (0 if b is None else b))


def test_attention_overwrites_only_a_bias_it_may():
    torch.manual_seed(0)
    attn = attention_module.Attention(dim=32, num_heads=4, qkv_bias=True)
    x, bias = torch.randn(3, 26, 32), torch.randn(3, 4, 26, 26)
    with torch.no_grad():
        expected, logits = attn(x, bias=bias.clone(), need_logits=True)
        kept = bias.clone()
        out, _ = attn(x, bias=kept)  # not allowed to overwrite
        assert torch.equal(kept, bias) and torch.equal(out, expected)
        scratch = bias.clone()
        out, in_place = attn(x, bias=scratch, overwrite_bias=True, need_logits=True)
        assert torch.equal(out, expected) and torch.equal(in_place, logits)
        assert in_place.data_ptr() == scratch.data_ptr()  # the logits took the bias's memory
    trainable = bias.clone().requires_grad_()
    out, _ = attn(x, bias=trainable, overwrite_bias=True)  # with autograd: never in place
    out.sum().backward()
    assert torch.equal(trainable.detach(), bias) and trainable.grad is not None


@pytest.mark.slow
def test_gradients_reach_upstream_exits():
    for feature_reuse, relation_reuse in [(True, False), (False, True)]:
        model = micro(feature_reuse=feature_reuse, relation_reuse=relation_reuse)
        model(images(2))[2].sum().backward()
        assert model.exits[0].blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert model.exits[0].head.weight.grad is None  # only through the reused tensors


def test_deit_small_single_exit_matches_timm():
    torch.manual_seed(0)
    reference = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    ours = create_model("deit_small", grids=(14,), img_size=224, in_chans=3, num_classes=1000).eval()
    ours.exits[0].load_state_dict(reference.state_dict())  # strict: identical parameter names and shapes
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x)[0] - reference(x)).abs().max() < 1e-5


def test_reference_cnn_is_a_one_exit_cascade_from_timm():
    import typing

    import timm

    from dvt.backbones import CONVNETS
    from dvt.config import Baseline
    from dvt.flops import count_cascade

    assert set(CONVNETS) == set(typing.get_args(Baseline))  # params.yaml accepts exactly these
    model = create_model("resnet18_w16", grids=(1,), img_size=56, in_chans=1, num_classes=10).eval()
    reference = timm.create_model("resnet18", in_chans=1, num_classes=10, channels=(16, 32, 64, 128)).eval()
    reference.load_state_dict(model.exits[0].net.state_dict())
    x = torch.randn(3, 1, 56, 56)
    (logits,) = model(x)
    torch.testing.assert_close(logits, reference(x), rtol=0, atol=0)
    # fvcore over the CNN: its convolutions and head, no reuse; one exit recorded with grid 1.
    cost = count_cascade(model)
    assert [e.grid for e in cost.exits] == [1] and cost.total_params == sum(p.numel() for p in reference.parameters())
    assert 0.005 < cost.total_gmacs < 0.05
    with pytest.raises(DvtError, match="resnet18_w16 is a CNN with one exit"):
        create_model("resnet18_w16", grids=(3, 5), img_size=56, in_chans=1, num_classes=10)


@pytest.mark.slow
def test_the_model_library_stands_alone():
    """dvt.models (and timm.create_model("dvt_...")) imports nothing of the pipeline: no params.yaml
    config, no stage, no DVC or Snakemake; those are the `pipeline` extra of pyproject.toml (issue #32)."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    code = ("import sys, timm, dvt.models\n"
            "timm.create_model('dvt_t2t_vit_12', num_classes=10)\n"
            "ours = sorted(m for m in sys.modules if m.startswith('dvt.') and not m.startswith("
            "('dvt.models', 'dvt.backbones', 'dvt.grids', 'dvt.errors', 'dvt.released')))\n"
            "print(ours, [m for m in ('dvc', 'dvclive', 'snakemake') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert not any(name in core for name in ("dvc", "snakemake"))
    assert {d.split("==")[0] for d in project["optional-dependencies"]["pipeline"]} >= {"dvc", "dvclive", "snakemake"}


def test_a_missing_pipeline_package_is_one_line(monkeypatch):
    import sys

    from dvt.errors import pipeline_module

    monkeypatch.setitem(sys.modules, "dvclive", None)  # what an install without the extra sees
    with pytest.raises(DvtError, match=r"^the log needs dvclive, which is not installed: pip install 'dvt\[pipeline\]'"):
        pipeline_module("dvclive", needed_for="the log")
