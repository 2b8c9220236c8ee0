"""A DVT cascade built from timm ViTs (issue #18, item 1): every exit is its ViT, reuse trains, and the
result is our own DeiT-S cascade."""

from __future__ import annotations

import pytest
import timm
import torch

from dvt.errors import DvtError
from dvt.models import cascade_from_timm, create_model

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow


def deit(grid: int, seed: int, **kwargs) -> torch.nn.Module:
    """deit_small_patch16_224 cut into grid x grid patches (random weights, the shape of the pretrained ones)."""
    torch.manual_seed(seed)
    return timm.create_model("deit_small_patch16_224", patch_size=224 // grid, **kwargs).eval()


@pytest.fixture(scope="module")
def vits():
    return [deit(7, 0), deit(14, 1)]


def test_without_reuse_every_exit_is_its_timm_vit(vits):
    cascade = cascade_from_timm(vits, feature_reuse=False, relation_reuse=False).eval()
    assert cascade.grids == (7, 14)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        for got, vit in zip(cascade(x), vits):
            torch.testing.assert_close(got, vit(x), rtol=1e-5, atol=1e-5)


def test_with_reuse_the_vits_weights_start_every_exit_and_one_step_trains(vits):
    cascade = cascade_from_timm(vits, feature_reuse=True, relation_reuse=True, num_classes=1000)
    own = cascade.state_dict()
    for k, vit in enumerate(vits):
        for key, value in vit.state_dict().items():
            mine = own[f"exits.{k}.{key}"]
            if mine.shape == value.shape:
                assert torch.equal(mine, value), key
            elif key.endswith("mlp.fc1.weight"):  # the reused channels' columns start at zero
                assert torch.equal(mine[:, : value.shape[1]], value) and not mine[:, value.shape[1]:].any()
    cascade.train()
    optimizer = torch.optim.AdamW(cascade.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([3, 7])
    before = {k: v.clone() for k, v in cascade.state_dict().items()}
    loss = sum(torch.nn.functional.cross_entropy(o, y) for o in cascade(x))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    moved = {k for k, v in cascade.state_dict().items() if not torch.equal(v, before[k])}
    assert any("feature_reuse" in k for k in moved) and any("relation_reuse" in k for k in moved)
    assert any(k.startswith("exits.0.blocks") for k in moved)


@pytest.mark.parametrize("feature_reuse, relation_reuse", [(True, True), (False, True), (True, False)])
def test_the_timm_built_cascade_is_our_deit_small_cascade(vits, feature_reuse, relation_reuse):
    theirs = cascade_from_timm(vits, feature_reuse=feature_reuse, relation_reuse=relation_reuse).eval()
    torch.manual_seed(9)
    ours = create_model("deit_small", grids=(7, 14), img_size=224, in_chans=3, num_classes=1000,
                        feature_reuse=feature_reuse, relation_reuse=relation_reuse).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same parameters, by name and shape
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        for got, want in zip(theirs(x), ours(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_by_name_with_grids_and_new_heads():
    cascade = cascade_from_timm(["vit_tiny_patch16_224", "vit_tiny_patch16_224"], grids=[7, 14], num_classes=37,
                                img_size=224)
    assert cascade.grids == (7, 14) and cascade.num_classes == 37 and cascade.spec.embed_dim == 192
    assert [e.patch_embed.proj.kernel_size for e in cascade.exits] == [(32, 32), (16, 16)]


@pytest.mark.parametrize("models, kwargs, message", [
    (lambda: [deit(7, 0), timm.create_model("vit_tiny_patch16_224")], {}, "differ in shape"),
    (lambda: [deit(7, 0, reg_tokens=4, no_embed_class=True)], {}, "class token and no register tokens"),
    (lambda: [timm.create_model("deit_small_patch16_224", global_pool="avg")], {}, "global_pool='token'"),
    (lambda: [deit(7, 0), deit(14, 1)], {"grids": [7, 10]}, "grids [7, 10] asked for, but the ViTs make [7, 14]"),
    (lambda: ["vit_tiny_patch16_224"] * 2, {"grids": [7, 10]}, "multiple of 10"),
    (lambda: [deit(7, 0)], {"num_classes": 10}, "num_classes=10"),
])
def test_what_does_not_fit_is_one_clear_error(models, kwargs, message):
    with pytest.raises(DvtError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cascade_from_timm(models(), **kwargs)


def test_a_run_of_timm_exits_goes_through_every_stage(tmp_path, capsys):
    """params.yaml `runs.R.timm` (one timm model per grid) and `pretrained` (a local file per exit):
    initialised from the file, then trained, collected, counted, budgeted and timed like any run; a
    bad name or file is refused by `dvt check` with one line."""
    import json

    from dvt.cli import main
    from dvt.config import load_config
    from dvt.run_models import model_for_run
    from tests.helpers import write_params_file

    torch.manual_seed(4)
    vit = timm.create_model("test_vit", img_size=16, patch_size=4, in_chans=1, num_classes=4)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    run = {"grids": [2, 4], "timm": ["test_vit", "test_vit"], "pretrained": [None, str(tmp_path / "vit.pth")]}
    base = {"data": {"dataset": "synthetic", "calibration_size": 32,
                     "synthetic": {"train_size": 96, "test_size": 32, "image_size": 16, "channels": 1, "classes": 4}},
            "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "threads": 1},
            "eval": {"num_budgets": 5}, "speed": {"batch_size": 8, "warmup": 0, "repeats": 1, "budgets": [2]}}
    params = write_params_file(tmp_path, {**base, "runs": {"vits": run}})
    # exit 2 starts as the file's ViT (but for the reused channels of norm2 / fc1, and the head: timm
    # gives a new one when the dataset's classes differ from its pretrained_cfg's), exit 1 as timm inits it
    model = model_for_run(load_config(params), "vits")
    for key, value in vit.state_dict().items():
        if "norm2" not in key and "fc1.weight" not in key and not key.startswith("head."):
            assert torch.equal(model.exits[1].state_dict()[key], value), key
    assert not torch.equal(model.exits[0].blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)

    for stage in ("fetch", "train", "flops", "collect", "budget", "speed"):
        assert main([stage, "--params", str(params)] + (["--run", "vits"] if stage != "fetch" else [])) == 0, stage
    folder = tmp_path / "runs" / "vits"
    assert json.loads((folder / "flops.json").read_text())["backbone"] == "timm:test_vit"
    speed = json.loads((folder / "seed42" / "speed.json").read_text())
    assert speed["static"]["standalone"]["grid"] == 4 and speed["dynamic"]["p2"]["img_per_s"] > 0

    capsys.readouterr()
    # Weights of another width, and bytes that are no weights: refused by the check, before any stage.
    wider = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=4)
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not weights" * 50)
    for key, value, message in (("timm", ["test_vit", "no_such_vit"], "'no_such_vit' is not a timm model"),
                                ("timm", ["test_vit", "resnet18"], "not a timm VisionTransformer"),
                                ("pretrained", [None, str(tmp_path / "missing.pth")], "no such file"),
                                ("pretrained", [None, str(tmp_path / "wider.pth")],
                                 f"{tmp_path / 'wider.pth'}: cannot be loaded into test_vit ("),
                                ("pretrained", [None, str(tmp_path / "junk.pth")],
                                 f"{tmp_path / 'junk.pth'}: cannot be loaded into test_vit")):
        (tmp_path / key).mkdir(exist_ok=True)
        bad = write_params_file(tmp_path / key, {**base, "runs": {"vits": {**run, key: value}}})
        assert main(["check", "--params", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and f"runs.vits.{key}" in err[0], err


def test_a_vit_whose_default_weights_have_no_head_is_taken_with_the_datasets_classes(tmp_path):
    """Issue #31: vit_small_patch8_224's default weights tag (DINO) has no head, and `dvt check` built it
    without the dataset's classes: a run of it was refused with "needs a linear head"."""
    from dvt.config import from_dict
    from dvt.stages.check import check

    config = from_dict({"data": {"dataset": "synthetic", "root": str(tmp_path / "data"), "calibration_size": 10,
                                 "synthetic": {"image_size": 32, "channels": 3, "classes": 10}},
                        "runs": {"vits": {"grids": [4], "timm": ["vit_small_patch8_224"]}}})
    check(config)
    # By name, without classes: the message says what to give.
    with torch.device("meta"), pytest.raises(DvtError, match=r"needs a linear head \(its default weights have none: "
                                                               r"pass num_classes\)"):
        cascade_from_timm(["vit_small_patch8_224"], grids=[4], img_size=32)


def test_the_mindspore_release_config_builds_its_four_cascades_and_trains_one_step():
    """configs/imagenet-deit-ms.yaml (issue #18, item 5): 2-exit DeiT-S cascades 7x7 -> 14x14 from timm's
    DeiT-S, one per reuse setting, and the two DeiT-S models alone (here on 224 px synthetic images)."""
    from dvt.config import load_config
    from dvt.run_models import model_for_run
    from dvt.stages.check import check
    from tests.helpers import REPO

    config = load_config(REPO / "configs" / "imagenet-deit-ms.yaml", [
        "data.dataset=synthetic", "data.synthetic={train_size: 2048, test_size: 8, image_size: 224, channels: 3, "
        "classes: 10, seed: 0}", "data.calibration_size=0", "eval.threshold_split=train-augmented"])
    check(config)
    kernels = {}
    for name, rc in config.runs.items():
        with torch.device("meta"):  # the structure only: six DeiT-S initialisations cost seconds each
            model = model_for_run(config, name)
        assert model.grids == rc.grids and model.spec.name == "timm:deit_small_patch16_224"
        kernels[name] = [e.patch_embed.proj.kernel_size[0] for e in model.exits]
        if len(rc.grids) == 2:
            assert (model.exits[1].has_feature_reuse, model.exits[1].has_relation_reuse) == \
                (rc.feature_reuse, rc.relation_reuse), name
    assert kernels == {"deit_s32": [32], "deit_s16": [16], **{r: [32, 16] for r in
                       ("dvt", "dvt_no_reuse", "dvt_feature_reuse", "dvt_relation_reuse")}}
    model = model_for_run(config, "dvt").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 2])
    loss = sum(torch.nn.functional.cross_entropy(o, y, label_smoothing=0.1) for o in model(x))
    loss.backward()
    before = model.exits[1].relation_reuse[0].weight.clone()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(model.exits[1].relation_reuse[0].weight, before)
