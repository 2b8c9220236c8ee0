"""benchmarks/paper_speed.py (issue #17): the Table 2 script for the paper's cascades, run here at reduced
size (a few images, one repeat) on the CPU, as the GPU check would run at full size."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def load_script(name: str = "paper_speed"):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed") / "paper_speed.json"
    load_script().main(["--cascades", "t2t_vit_12", "--batch-sizes", "1", "6", "--repeats", "2", "--warmup", "0",
                        "--train", "--train-batch", "2", "--train-steps", "1", "--out", str(out)])
    return json.loads(out.read_text())


def test_the_json_says_where_and_how_it_was_measured(measured):
    prov = measured["provenance"]
    assert prov["device"] == "cpu" and prov["threads"] == 1 and prov["torch"].startswith("2.")
    assert prov["device_name"] and prov["timm"] and prov["date"] and prov["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"]) and isinstance(prov["git_dirty"], bool)
    assert [(r["cascade"], r["batch_size"], r["dtype"]) for r in measured["inference"]] == [
        ("DVT-T2T-ViT-12", 1, "fp32"), ("DVT-T2T-ViT-12", 6, "fp32")]


def test_costs_are_the_papers(measured):
    """GMACs of DVT-T2T-ViT-12 at 224 px: 0.47 / 1.46 / 3.50 cumulative, and 1.78 for T2T-ViT-12 alone."""
    for row in measured["inference"]:
        assert row["gmacs"]["cumulative"] == pytest.approx([0.47, 1.46, 3.50], rel=0.01)
        assert row["gmacs"]["standalone"] == pytest.approx(1.78, rel=0.01)


def test_early_exit_runs_the_named_exit_shares(measured):
    """The thresholds fitted on the timed batch send out exactly floor(n * share) images per exit (the
    paper's rule), and every ratio is the one its parts give."""
    script = load_script()
    from dvt.thresholds import budget_fractions

    targets = budget_fractions(3, num_budgets=30, q_step=script.Q_STEP)
    for row in measured["inference"]:
        n = row["batch_size"]
        F = np.array(row["gmacs"]["cumulative"])
        for p in (10, 20, 30):
            d = row["dynamic"][f"p{p}"]
            assert d["target_shares"] == pytest.approx(targets[p - 1].tolist())
            if n == 1:  # one image: the paths mixed by the shares themselves
                assert d["exit_shares"] == pytest.approx(d["target_shares"])
            else:
                counts = np.round(np.array(d["exit_shares"]) * n).astype(int)
                first = np.floor(n * targets[p - 1][:2] + 1e-6).astype(int)
                assert counts[:2].tolist() == first.tolist() and counts.sum() == n
            assert d["gmacs"] == pytest.approx(float(np.array(d["exit_shares"]) @ F))
            assert d["ideal"] == pytest.approx(row["gmacs"]["standalone"] / d["gmacs"])
            assert d["efficiency_min"] <= d["efficiency"] <= d["efficiency_max"]
            assert d["measured"] > 0 and d["img_per_s"] > 0


def test_training_throughput_with_and_without_reuse(measured):
    t = measured["training"]["fp32"]
    assert t["reuse"]["img_per_s"] > 0 and t["no_reuse"]["img_per_s"] > 0
    assert t["reuse_cost"] == pytest.approx(t["no_reuse"]["img_per_s"] / t["reuse"]["img_per_s"])


@pytest.mark.parametrize("backbone, grids, side, chans, batch", [
    ("vit_micro_ss", (3, 5, 7), 56, 1, 9),  # the default
    ("t2t_vit_12", (7, 10, 14), 224, 3, 2),
])
def test_each_cpu_path_changes_only_the_speed(backbone, grids, side, chans, batch):
    """benchmarks/cpu_paths.py times each CPU-specific path against the generic code in its place:
    both must compute the same logits."""
    import torch

    from dvt.models import create_model

    cpu_paths = load_script("cpu_paths")
    torch.manual_seed(0)
    model = create_model(backbone, grids=grids, img_size=side, in_chans=chans, num_classes=10).eval()
    x = torch.randn(batch, chans, side, side)
    with torch.inference_mode():
        reference = model(x)
        for path in cpu_paths.PATHS:
            with cpu_paths.path_off(path):
                for k, (got, want) in enumerate(zip(model(x), reference)):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{path}, exit {k + 1}")
