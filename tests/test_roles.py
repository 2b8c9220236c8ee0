"""Which run plays which part in the report, read off params.yaml alone (no run has to exist)."""

from __future__ import annotations

from dvt.reporting.compare import assign_roles
from dvt.reporting.inputs import run_files
from tests.helpers import make_config

RUNS = {
    "tokens_2x2": {"grids": [2]},
    "tokens_4x4": {"grids": [4]},
    "dvt_no_reuse": {"grids": [2, 4], "feature_reuse": False, "relation_reuse": False},
    "mini_no_reuse": {"grids": [2, 4], "backbone": "vit_mini", "feature_reuse": False, "relation_reuse": False},
    "dvt": {"grids": [2, 4]},
    "mini": {"grids": [2, 4], "backbone": "vit_mini"},
    "mini_4x4": {"grids": [4], "backbone": "vit_mini"},
    "coarse": {"grids": [2, 3]},
    "cnn": {"baseline": "resnet18_w16"},
}


def test_every_cascade_has_a_view_and_each_set_of_reuse_siblings_one_lead(tmp_path):
    config = make_config(tmp_path, runs=RUNS, model={"backbone": "vit_micro"})
    roles = assign_roles(run_files(config))
    # the paper's DVT: the first cascade with both reuses, though a no-reuse cascade comes first
    assert roles.dvt.name == "dvt"
    assert [v.dvt.name for v in roles.views] == ["dvt", "dvt_no_reuse", "mini_no_reuse", "mini", "coarse"]
    # a set's lead is its first cascade with both reuses (mini, not mini_no_reuse listed before it);
    # other grids are another set
    assert [v.dvt.name for v in roles.leads] == ["dvt", "mini", "coarse"]
    by_name = {v.dvt.name: v for v in roles.views}
    # each cascade against the one-exit runs of its own backbone; siblings never cross backbones
    assert [r.name for r in roles.singles] == ["tokens_2x2", "tokens_4x4"]
    assert [r.name for r in by_name["mini"].singles] == ["mini_4x4"]
    assert {k: r.name for k, r in roles.ablation.items() if r} == {"both": "dvt", "none": "dvt_no_reuse"}
    assert {k: r.name for k, r in by_name["mini"].ablation.items() if r} == {"both": "mini", "none": "mini_no_reuse"}
    assert {k: r.name for k, r in by_name["coarse"].ablation.items() if r} == {"both": "coarse"}
    # Fig. 6's family on the last grid mixes backbones (so it exists) for both sets
    assert {r.name for r in roles.family} == {r.name for r in by_name["mini"].family} == {"tokens_4x4", "mini_4x4"}
    assert roles.run_names == {
        "cascades": ["dvt", "dvt_no_reuse", "mini_no_reuse", "mini", "coarse"],
        "leads": ["dvt", "mini", "coarse"],
        "singles": ["tokens_2x2", "tokens_4x4", "mini_4x4"],
        "ablation": ["dvt", "dvt_no_reuse", "mini", "mini_no_reuse", "coarse"],
        "family": ["tokens_4x4", "mini_4x4"],
        "baselines": ["cnn"],
    }


def test_without_a_both_reuse_cascade_the_first_cascade_is_the_paper_s(tmp_path):
    runs = {"tokens_4x4": {"grids": [4]},
            "a": {"grids": [2, 4], "feature_reuse": False, "relation_reuse": False},
            "b": {"grids": [2, 4], "feature_reuse": True, "relation_reuse": False}}
    roles = assign_roles(run_files(make_config(tmp_path, runs=runs, model={"backbone": "vit_micro"})))
    assert roles.dvt.name == "a" and [v.dvt.name for v in roles.leads] == ["a"]
    assert {k: r.name for k, r in roles.ablation.items() if r} == {"none": "a", "feature": "b"}


def test_without_a_cascade_there_are_no_views(tmp_path):
    roles = assign_roles(run_files(make_config(tmp_path, runs={"tokens_4x4": {"grids": [4]}},
                                               model={"backbone": "vit_micro"})))
    assert roles.dvt is None and roles.views == () and roles.leads == ()
    assert [r.name for r in roles.singles] == ["tokens_4x4"]
    assert roles.run_names["cascades"] == [] and roles.run_names["singles"] == []
