"""`dvt check` and the loader refuse, in one line and before any work, what a later stage would refuse.

Each case here once got past loading and failed (or silently did the wrong thing) only inside a stage:
issue #15, items 2, 7 and 12.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvt.cli import main
from dvt.config import load_config, read_params
from dvt.errors import ConfigError
from dvt.stages import fetch
from dvt.stages.check import CHECKED, check
from tests.helpers import REPO, make_config, write_fashion


@pytest.mark.parametrize("sections, message", [
    ({"model": {"backbone": "vit_micro_sss"}, "runs": {"a": {"grids": [3]}}},
     "model.backbone: unknown backbone 'vit_micro_sss'; valid backbones: "),
    ({"runs": {"a": {"grids": [7]}, "b": {"grids": [7], "backbone": "vit_micro_ss_d9"}}},
     "runs.b.backbone: unknown backbone 'vit_micro_ss_d9'; valid backbones: "),
    ({"runs": {"b": {"grids": [8], "backbone": "vit_micro_ss_d2"}}},
     "runs.b.grids: grid 8 cannot be made from 56x56 images by backbone 'vit_micro_ss_d2'; valid grids at this size: "),
    ({"model": {"backbone": "vit_micro_ss"}, "runs": {"a": {"grids": [3, 8]}}},
     "runs.a.grids: grid 8 cannot be made from 56x56 images by backbone 'vit_micro_ss'; valid grids at this size: "),
    ({"runs": {"a": {"grids": [3], "init": "nowhere/checkpoint.pt"}}},
     "runs.a.init = 'nowhere/checkpoint.pt': no such file"),
    # a released checkpoint not downloaded yet: where the authors publish it
    ({"runs": {"a": {"grids": [3, 5, 7], "checkpoint": "checkpoints/DVT_T2t_vit_12.pth.tar"}}},
     "runs.a.checkpoint = 'checkpoints/DVT_T2t_vit_12.pth.tar': no such file; the authors publish "
     "DVT_T2t_vit_12.pth.tar at https://cloud.tsinghua.edu.cn/f/f7987d559f00435caa3d/?dl=1"),
    ({"runs": {"a": {"grids": [3]}}, "train": {"randaugment": "bogus"}},
     "train.randaugment = 'bogus' is not a timm augmentation string"),
])
def test_what_a_stage_would_refuse_is_refused_by_check(tmp_path, sections, message):
    config = make_config(tmp_path, **{"model": {"backbone": "vit_micro_ss"}, **sections})
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check(config)


def test_a_valid_config_passes_and_the_shipped_params_too(tmp_path):
    check(make_config(tmp_path, runs={"a": {"grids": [3, 5, 7]}}, train={"randaugment": "rand-m9-mstd0.5-inc1"}))
    check(load_config(REPO / "params.yaml"))


def test_data_root_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    config = make_config(tmp_path, data={"root": str(tmp_path / "afile" / "data")}, runs={"a": {"grids": [3]}})
    with pytest.raises(ConfigError, match=r"data.root = .*afile/data': .*afile is a file, not a folder"):
        check(config)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "synthetic", "root": str(tmp_path / "afile" / "data")}}))
    assert main(["fetch", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]


def test_a_missing_data_source_is_refused_unless_the_data_were_fetched_from_it(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_fashion(raw, np.random.default_rng(0))
    settings = {"model": {"backbone": "vit_micro"}, "runs": {"a": {"grids": [7]}}}
    gone = make_config(tmp_path, data={"dataset": "fashion-mnist", "source": str(tmp_path / "gone")}, **settings)
    with pytest.raises(ConfigError, match=r"^data.source = '.*gone': no such folder or file, and .*fashion-mnist "
                                          r"was not fetched from it \(dvt fetch would need it\)$"):
        check(gone)
    # Fetched from raw/, the source may go: nothing reads it again, and fetch is a no-op.
    fetched = make_config(tmp_path, data={"dataset": "fashion-mnist", "source": str(raw), "calibration_size": 20},
                          **settings)
    fetch.run(fetched)
    raw.rename(tmp_path / "moved")
    check(fetched)
    fetch.run(fetched)
    assert "is up to date" in capsys.readouterr().out
    # Synthetic data never read a source.
    check(make_config(tmp_path, data={"dataset": "synthetic", "source": str(tmp_path / "gone"), "calibration_size": 20},
                      **settings))


def test_speed_device_must_be_a_device(tmp_path):
    with pytest.raises(ConfigError, match=r"speed.device = 'cuda:x' is not allowed: auto, cpu, cuda or cuda:N"):
        make_config(tmp_path, speed={"device": "cuda:x"})
    assert make_config(tmp_path, speed={"device": "cuda:1"}).speed.device == "cuda:1"


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "key 'lr' is given twice in one section (lines 2 and 4)"),
    ("runs:\n  dvt:\n    grids: [3]\n  dvt:\n    grids: [5]\n",
     "key 'dvt' is given twice in one section (lines 2 and 4)"),
])
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_params(path)
    assert str(err.value) == f"{path}: {message}; keep one"


def test_the_check_stage_writes_the_same_bytes_and_refuses_in_one_line(tmp_path, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(runs_dir=str(tmp_path / "runs"), data={**params["data"], "root": str(tmp_path / "data")})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert main(["check", "--params", str(path)]) == 0
    ok = tmp_path / "runs" / CHECKED
    first = ok.read_bytes()
    assert main(["check", "--params", str(path)]) == 0 and ok.read_bytes() == first
    capsys.readouterr()
    assert main(["check", "--params", str(path), "--set", "model.backbone=vit_micro_sss"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dvt check: error: model.backbone: unknown backbone 'vit_micro_sss'")
    assert ok.read_bytes() == first
    # train, flops, collect and speed check too, before touching anything.
    assert main(["flops", "--params", str(path), "--run", "dvt", "--set", "runs.dvt.grids=[3,8]"]) == 2
    assert "runs.dvt.grids: grid 8 cannot be made" in capsys.readouterr().err
    assert not Path(tmp_path / "runs" / "dvt").exists()


def test_a_weights_file_of_random_bytes_is_one_line(tmp_path, capsys):
    """A checkpoint, `init` or `checkpoint` file of random bytes used to end in an UnpicklingError
    traceback (issue #15, item 10)."""
    import numpy as np

    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(runs_dir=str(tmp_path / "runs"), data={"dataset": "synthetic", "root": str(tmp_path / "data"),
                                                         "calibration_size": 50,
                                                         "synthetic": {"train_size": 200, "test_size": 50}},
                  model={"backbone": "vit_micro"}, runs={"plain": {"grids": [4]}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert main(["fetch", "--params", str(path)]) == 0
    (tmp_path / "runs" / "plain" / "seed42").mkdir(parents=True)
    (tmp_path / "runs" / "plain" / "seed42" / "checkpoint.pt").write_bytes(junk.read_bytes())
    # A junk init or checkpoint is refused by the check before any stage, whichever run the stage is for.
    for key in ("init", "checkpoint"):
        junk_params = tmp_path / f"{key}.yaml"
        runs = {**params["runs"], "ft": {"grids": [4], key: str(junk)}}
        junk_params.write_text(yaml.safe_dump({**params, "runs": runs}))
        for stage, run in (("train", "ft"), ("collect", "plain"), ("check", None)):
            capsys.readouterr()
            assert main([stage, "--params", str(junk_params)] + (["--run", run] if run else [])) == 2, (stage, run)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"runs.ft.{key}: {junk}: not a readable checkpoint (UnpicklingError" in err[0], \
                (stage, run, err)
    # A run's own junk checkpoint.pt is refused by the stage that reads it.
    for stage, run in (("collect", "plain"), ("train", "plain")):
        assert main([stage, "--params", str(path), "--run", run]) == 2, (stage, run)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a readable checkpoint (UnpicklingError" in err[0], (stage, run, err)
    # --restart (what the engines pass) starts over instead, and the junk is replaced by a real checkpoint.
    assert main(["train", "--params", str(path), "--run", "plain", "--restart", "--set", "train.epochs=1",
                 "--set", "train.warmup_epochs=0", "--set", "train.batch_size=50"]) == 0
    assert "starting over" in capsys.readouterr().out
    assert main(["collect", "--params", str(path), "--run", "plain", "--set", "train.epochs=1",
                 "--set", "train.warmup_epochs=0", "--set", "train.batch_size=50"]) == 0


def _meta_weights(path: Path, config, run: str, *, official: bool = False) -> None:
    """A weights file of `run`'s model with meta tensors: names and shapes only, all that check reads."""
    import torch

    from dvt import checkpoint
    from dvt.models import to_official_state_dict
    from dvt.run_models import model_for_run

    with torch.device("meta"):
        model = model_for_run(config, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model_state_dict": to_official_state_dict(model)} if official else \
        {"format": checkpoint.FORMAT, "model": model.state_dict()}
    torch.save(obj, path)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_passes_the_check(name, tmp_path, monkeypatch):
    """Each config in configs/ is valid as shipped (one had a grid its backbone cannot make, two an init
    path that no run writes). ImageNet is not here: its configs get synthetic images of its size and
    classes. The weights they name are made in their place: the CIFAR configs' init from the ImageNet
    config's run (so the path must name a run and seed that configs/imagenet-t2t12.yaml trains), the
    official checkpoint in the official layout."""
    monkeypatch.chdir(tmp_path)
    overrides = [f"data.root={tmp_path / 'data'}", f"runs_dir={tmp_path / 'runs'}"]
    text = (REPO / "configs" / name).read_text()
    if "dataset: imagenet" in text:
        overrides += ["data.dataset=synthetic", "data.synthetic={train_size: 4096, test_size: 4, image_size: 224, "
                      "channels: 3, classes: 1000, seed: 0}", "data.calibration_size=0"]
    config = load_config(REPO / "configs" / name, overrides)
    imagenet = load_config(REPO / "configs" / "imagenet-t2t12.yaml", overrides[:2] + [
        "data.dataset=synthetic", "data.synthetic={train_size: 4096, test_size: 4, image_size: 224, channels: 3, "
        "classes: 1000, seed: 0}"])
    for run, rc in config.runs.items():
        if rc.init:
            parts = Path(rc.init).parts  # imagenet/runs/<run>/seed<S>/checkpoint.pt
            assert parts[:2] == ("imagenet", "runs") and parts[4] == "checkpoint.pt", rc.init
            assert parts[2] in imagenet.runs and int(parts[3].removeprefix("seed")) in imagenet.seeds, rc.init
            _meta_weights(tmp_path / rc.init, imagenet, parts[2])
        if rc.checkpoint:
            _meta_weights(tmp_path / rc.checkpoint, config, run, official=True)
    check(config)


def test_weights_that_do_not_fit_the_run_are_refused_by_check(tmp_path):
    """runs.R.init and runs.R.checkpoint are loaded (shapes only) the way train loads them: a checkpoint
    of another model is refused before any stage, where it once passed and cost the run's outputs."""
    config = make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 20},
                         model={"backbone": "vit_micro"}, runs={"a": {"grids": [4, 7]}, "b": {"grids": [7]},
                                                                "cnn": {"baseline": "resnet18_w16"}})
    for run in ("a", "b", "cnn"):
        _meta_weights(tmp_path / f"{run}.pt", config, run)
    other = make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 20,
                                        "synthetic": {"classes": 5}}, model={"backbone": "vit_micro"},
                        runs={"a": {"grids": [4, 7]}})
    _meta_weights(tmp_path / "a5.pt", other, "a")

    def with_run(**rc):
        return make_config(tmp_path, data={"dataset": "synthetic", "calibration_size": 20},
                           model={"backbone": "vit_micro"}, runs={"r": {"grids": [4, 7], **rc}})

    check(with_run(checkpoint=str(tmp_path / "a.pt")))  # its own kind fits exactly
    check(with_run(init=str(tmp_path / "a5.pt")))  # fine-tuning: the 5-class heads stay fresh
    with pytest.raises(ConfigError, match=r"^runs\.r\.checkpoint: .*a5\.pt does not fit this run's model: wrong "
                                          r"shape \(4\): exits\.0\.head\.bias, exits\.0\.head\.weight, exits\.1\.head\.bias \.\.\.$"):
        check(with_run(checkpoint=str(tmp_path / "a5.pt")))  # but not to use as it is
    with pytest.raises(ConfigError, match=r"^runs\.r\.checkpoint: .*b\.pt does not fit this run's model: missing"):
        check(with_run(checkpoint=str(tmp_path / "b.pt")))
    with pytest.raises(ConfigError, match=r"^runs\.r\.init: .*cnn\.pt shares too little with this run's model "
                                          r"\(0 of \d+ tensors fit\); is it another backbone\?$"):
        check(with_run(init=str(tmp_path / "cnn.pt")))
    with pytest.raises(ConfigError, match=r"^runs\.r\.checkpoint: .*a\.pt: neither a dvt checkpoint nor an official"):
        import torch

        torch.save({"weights": {}}, tmp_path / "a.pt")
        check(with_run(checkpoint=str(tmp_path / "a.pt")))


def test_a_run_cannot_start_from_its_own_output_nor_can_params_name_no_runs(tmp_path):
    """Both passed the check and cost outputs: the engines delete runs/R/seed42/checkpoint.pt before
    training R again from it (under Snakemake, for good); with no runs DVC deleted every report."""
    settings = {"data": {"dataset": "synthetic", "calibration_size": 20}, "model": {"backbone": "vit_micro"}}
    config = make_config(tmp_path, runs={"r": {"grids": [4]}, "s": {"grids": [4]}}, **settings)
    _meta_weights(tmp_path / "runs" / "r" / "seed42" / "checkpoint.pt", config, "r")
    own = str(tmp_path / "runs" / "r" / "seed42" / "checkpoint.pt")
    for key in ("init", "checkpoint"):
        with pytest.raises(ConfigError, match=rf"^runs\.r\.{key} = '.*checkpoint\.pt' is this run's own output"):
            check(make_config(tmp_path, runs={"r": {"grids": [4], key: own}}, **settings))
    check(make_config(tmp_path, runs={"r": {"grids": [4]}, "s": {"grids": [4], "checkpoint": own}}, **settings))
    with pytest.raises(ConfigError, match=r"^runs: params.yaml names no runs"):
        check(make_config(tmp_path, runs={}, **settings), pipeline=True)
    check(make_config(tmp_path, runs={}, **settings))  # `dvt fetch` alone needs none
    assert make_config(tmp_path, speed={"budgets": []}, **settings).speed.budgets == ()
