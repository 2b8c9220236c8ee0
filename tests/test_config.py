"""params.yaml is loaded strictly: names, types and ranges are checked, errors name the key."""

import io
import re
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from dvt.cli import main
from dvt.config import Config, from_dict, load_config, read_params, to_dict
from dvt.errors import ConfigError
from dvt.progress import progress
from tests.helpers import REPO


def test_default_params_load_and_round_trip():
    config = load_config(REPO / "params.yaml")
    assert isinstance(config, Config)
    assert config.data.dataset == "cluttered-fashion-mnist"
    assert config.model.backbone == "vit_micro_ss"
    assert config.runs["dvt"].grids == (3, 5, 7)
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize("data, message", [
    ({"trian": {}}, "unknown key trian"),
    ({"train": {"lrr": 1}}, "unknown key train.lrr"),
    ({"train": {"lr": "fast"}}, "train.lr = 'fast' has the wrong type"),
    ({"train": {"epochs": 2.5}}, "train.epochs = 2.5 has the wrong type"),
    ({"train": {"lr": -0.1}}, "train.lr = -0.1 is not allowed"),
    ({"train": {"lr": 0}}, "train.lr = 0.0 is not allowed"),
    ({"train": {"epochs": 0}}, "train.epochs = 0 is not allowed"),
    ({"data": {"dataset": "mnist"}}, "data.dataset = 'mnist' is not one of"),
    ({"data": {"calibration_size": -1}}, "data.calibration_size = -1 is not allowed"),
    ({"runs": {"a": {"grids": [7, 4]}}}, "runs.a.grids = [7, 4] is not allowed"),
    ({"runs": {"a": {"grids": "7"}}}, "runs.a.grids = '7' has the wrong type"),
    ({"runs": {"a": {"feature_reuse": "yes"}}}, "runs.a.feature_reuse = 'yes' has the wrong type"),
    ({"speed": {"device": "tpu"}}, "speed.device = 'tpu' is not allowed"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=None) as err:
        from_dict(data)
    assert message in str(err.value)


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    config = load_config(path, ["train.lr=0.002", "runs.x.grids=[2, 4]", "train.ema_decay=null"])
    assert config.train.lr == 0.002
    assert config.runs["x"].grids == (2, 4)
    assert config.train.ema_decay is None
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.lr"])


def test_unknown_run_is_refused():
    with pytest.raises(ConfigError, match="unknown run 'nope'; runs in params.yaml: a"):
        from_dict({"runs": {"a": {"grids": [7]}}}).run("nope")


def test_cli_reports_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: -1\n")
    assert main(["fetch", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dvt fetch: error: train.lr = -1.0 is not allowed: must be > 0"]
    path.write_text("train: [\n")
    assert main(["fetch", "--params", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert done.value.code == 0 and capsys.readouterr().out == f"dvt {version}\n"


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_are_sparse_in_logs(monkeypatch, terminal):
    """Under an engine stderr is a log file: a bar refreshing every second (training's) would add a line
    a second; there it refreshes every 30 s. A loop of 100 simulated seconds, 20 ms a step."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    now = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    out = io.StringIO()
    for _ in progress(range(5000), mininterval=1.0, file=out):
        now[0] += 0.02
    frames = out.getvalue().count("\r")
    if terminal:
        assert frames >= 50  # about one a second
    else:
        assert 2 <= frames <= 6  # the first, one every 30 s, the last


@pytest.mark.parametrize("run, message", [
    ({"baseline": "resnet18_w16", "grids": [3]}, "runs.cnn.grids = [3] is not allowed: a baseline CNN"),
    ({"baseline": "vgg"}, "runs.cnn.baseline = 'vgg' is not one of 'resnet18_w16' | 'resnet18'"),
    ({}, "runs.cnn.grids = [] is not allowed: at least one grid"),
    ({"baseline": "resnet18", "backbone": "vit_micro"}, "runs.cnn.backbone = 'vit_micro' is not allowed: a run's model"),
])
def test_baseline_runs_are_checked(run, message):
    with pytest.raises(ConfigError) as err:
        from_dict({"runs": {"cnn": run}})
    assert message in str(err.value)
    ok = from_dict({"runs": {"cnn": {"baseline": "resnet18_w16"}}, "model": {"backbone": "vit_micro"}})
    assert ok.run("cnn").exit_grids == (1,) and ok.backbone_of("cnn") == "resnet18_w16"


def test_a_run_can_name_its_own_backbone():
    config = from_dict({"model": {"backbone": "vit_micro_ss"},
                        "runs": {"a": {"grids": [7]}, "b": {"grids": [7], "backbone": "vit_micro_ss_d2"}}})
    assert (config.backbone_of("a"), config.backbone_of("b")) == ("vit_micro_ss", "vit_micro_ss_d2")


def test_full_config_is_the_default_plus_the_single_reuse_cascades():
    default, full = load_config(REPO / "params.yaml"), load_config(REPO / "configs" / "cluttered-full.yaml")
    assert {k: v for k, v in full.to_dict().items() if k != "runs"} == \
        {k: v for k, v in default.to_dict().items() if k != "runs"}
    extra = {name: run for name, run in full.runs.items() if name not in default.runs}
    assert {(r.grids, r.feature_reuse, r.relation_reuse) for r in extra.values()} == \
        {((3, 5, 7), True, False), ((3, 5, 7), False, True)}
    assert all(full.runs[name] == run for name, run in default.runs.items())


def test_a_key_left_out_means_what_params_yaml_says():
    """An empty or partial params file used to take other defaults than params.yaml (calibration 5,000
    instead of 3,000, vit_tiny, 10 epochs): `dvt fetch` re-split the data (issue #15, item 8)."""
    shipped = load_config(REPO / "params.yaml")
    assert replace(from_dict({}), runs=shipped.runs) == shipped


def test_three_seed_config_is_the_default_with_three_seeds():
    default, three = load_config(REPO / "params.yaml"), load_config(REPO / "configs" / "cluttered-3seeds.yaml")
    assert three.seeds == (42, 43, 44) and default.seeds == (42,)
    assert replace(three, seeds=default.seeds) == default


def test_seeds_are_checked_and_narrowed_one_at_a_time():
    config = from_dict({"seeds": [3, 1], "runs": {"a": {"grids": [7]}}})
    with pytest.raises(ConfigError, match=r"seeds = \[3, 1\]: pick one"):
        config.seed
    one = config.with_seed(1)
    assert one.seed == 1 and one.run_dir("a") == Path("runs/a/seed1") and one.flops_path("a") == Path("runs/a/flops.json")
    with pytest.raises(ConfigError, match=r"seed 2 is not in seeds \[3, 1\]"):
        config.with_seed(2)
    # issue #31: 2**32 passed the check (and updated dvc.lock) before crashing inside numpy
    for bad, message in (([], "name at least one seed"), ([1, 1], "each seed once"),
                         ([-1], r"seeds are from 0 to 4294967295"), ([42, 2**32], r"seeds = \[42, 4294967296\]")):
        with pytest.raises(ConfigError, match=message):
            from_dict({"seeds": bad})
    assert from_dict({"seeds": [2**32 - 1]}).seed == 2**32 - 1


def test_an_empty_params_file_is_refused_not_run_with_every_default(tmp_path):
    """Issue #31: an emptied params.yaml ran every default and replaced the fetched dataset."""
    for text in ("", "# nothing but a comment\n", "---\n"):
        path = tmp_path / "params.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"params.yaml is empty; start from the shipped params.yaml"):
            read_params(path)
    # and every command says so in one line, exit status 2, having written nothing
    assert main(["fetch", "--params", str(path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    with pytest.raises(ConfigError, match=r"train.seed is now seeds \(a top-level list"):
        from_dict({"train": {"seed": 42}})


def test_budgets_that_would_all_send_every_image_past_exit_1_are_refused():
    """Issue #31: eval.q_step = 100 wrote 59 identical budgets into the git-tracked metrics."""
    assert from_dict({"eval": {"num_budgets": 59, "q_step": 0.05}}).eval.q_step == 0.05
    assert from_dict({"eval": {"num_budgets": 40, "q_step": 0.25}}).eval.q_step == 0.25
    with pytest.raises(ConfigError, match=r"eval.q_step = 100.0 is not allowed: num_budgets x q_step \(the largest q\) "
                                          r"must be <= 10; the paper's 59 x 0.05 = 2.95"):
        from_dict({"eval": {"q_step": 100}})


def test_warmup_may_be_a_fraction_of_an_epoch():
    assert from_dict({"train": {"epochs": 2, "warmup_epochs": 0.1}}).train.warmup_epochs == 0.1
    assert from_dict({"train": {"epochs": 2, "warmup_epochs": 1}}).train.warmup_epochs == 1.0
    with pytest.raises(ConfigError, match=r"train.warmup_epochs = 2.5 is not allowed: must be in \[0, train.epochs=2\)"):
        from_dict({"train": {"epochs": 2, "warmup_epochs": 2.5}})


def test_a_bar_in_a_log_ends_its_line_before_an_error(monkeypatch):
    """A bar asked to erase itself (leave=False) would leave 'bar\\r   \\r' in a log, and the error line
    printed next would share the bar's line; in a log every bar ends with a newline."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    out = io.StringIO()
    with pytest.raises(ValueError):
        for i in progress(range(10), desc="index", leave=False, file=out):
            if i == 3:
                raise ValueError
    assert out.getvalue().endswith("\n") and "index" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize("run, ok", [("dvt_no_reuse", True), ("t2t-12.v2", True), ("my run", False),
                                     ("a/b", False), ("-x", False), ("", False)])
def test_a_run_name_is_a_word_that_folders_stages_and_commands_all_take(tmp_path, run, ok):
    """A space split `dvt train --run my run` in two, and DVC failed after the check had passed."""
    from tests.helpers import make_config

    settings = {"data": {"dataset": "synthetic", "calibration_size": 20}, "runs": {run: {"grids": [4]}}}
    if ok:
        assert run in make_config(tmp_path, **settings).runs
    else:
        with pytest.raises(ConfigError, match=rf"^runs = {re.escape(repr(run))} is not allowed: a run's name is "):
            make_config(tmp_path, **settings)


@pytest.mark.parametrize("params, key", [({"policies": None}, "policies"), ({"train": None}, "train"),
                                         ({"runs": {"dvt": None}}, "runs.dvt")])
def test_an_empty_section_is_refused_not_read_as_every_default(params, key):
    """Issue #31: `policies:` with nothing under it meant the defaults."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} is empty \(null\): give its keys"):
        from_dict(params)


@pytest.mark.parametrize("name", ["off", "no", "yes", "on", "42"])
def test_a_run_name_yaml_reads_as_a_bool_or_number_is_refused(tmp_path, name):
    """A run called `off` used to become the run 'False' (YAML 1.1 booleans), named so in every path."""
    from dvt.config import load_config

    path = tmp_path / "params.yaml"
    path.write_text(f"runs:\n  {name}:\n    grids: [2, 4]\n")
    with pytest.raises(ConfigError, match=r"^runs: the name .* is not text .*quote it"):
        load_config(path)
    path.write_text(f"runs:\n  '{name}':\n    grids: [2, 4]\n")
    assert list(load_config(path).runs) == [name]
