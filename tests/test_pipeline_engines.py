"""dvc.yaml and the Snakemake workflow describe the same jobs, and both validate params the same way.

These read the engines' own expansion of the default params.yaml (no job runs); the end-to-end
runs of both engines on a tiny config are in test_pipeline_runs.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from dvt.schema import params_schema
from dvt.stages.report import PARTS
from tests.helpers import BIN, REPO, engine_env


def dvc_jobs(root: Path) -> dict[str, str]:
    """{output path: command} of every stage of dvc.yaml, as DVC expands it, less the `check` stage.

    `check` is DVC's alone: it validates params.yaml before any stage runs, which Snakemake does when
    it loads the workflow (a Snakemake rule would rerun everything after it by its file's mtime).
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        jobs = {out.def_path: stage.cmd for stage in repo.index.stages for out in stage.outs}
        # ... and every other stage follows it.
        assert all("runs/params.ok" in [d.def_path for d in stage.deps] for stage in repo.index.stages
                   if stage.name not in ("check", "report"))
    assert jobs.pop("runs/params.ok") == "dvt check"
    return jobs


def snakemake_jobs(root: Path, *targets: str, args: tuple[str, ...] = ("--forceall",)) -> dict[str, str]:
    """{output path: shell command} of the jobs a dry run of Snakemake schedules."""
    out = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "2", *args, *targets], cwd=root,
                         capture_output=True, text=True, env=engine_env())
    assert out.returncode == 0, out.stderr + out.stdout
    jobs: dict[str, str] = {}
    for block in re.split(r"\n(?=rule |localrule )", out.stdout):
        outputs = re.search(r"^\s+output: (.+)$", block, re.M)
        command = re.search(r"^Shell command: (.+)$", block, re.M)
        if outputs and command and command.group(1) != "None":
            # Every job logs to logs/<rule>/...; without that redirect the command is dvc.yaml's, but
            # for the training processes, one per GPU a cluster job is given (one here, without GPUs).
            bare, logged = re.subn(r" > logs/\S+\.log 2>&1$", "", command.group(1))
            assert logged == 1, command.group(1)
            if bare.startswith("dvt train "):
                bare, launched = re.subn(r" --processes 1$", "", bare)
                assert launched == 1, command.group(1)
            jobs.update({path: bare for path in outputs.group(1).split(", ")})
    return jobs


def test_both_engines_expand_to_the_same_commands_and_outputs():
    dvc, smk = dvc_jobs(REPO), snakemake_jobs(REPO)
    assert len(dvc) > 40  # every stage of every run of the default params is there
    # The report is one DVC stage (`dvt report` renders every part) and one Snakemake rule per part.
    report = {path for path in smk if path.startswith("reports/")}
    assert {path for path, cmd in dvc.items() if cmd == "dvt report"} == report
    assert {path: smk[path] for path in report} == {f"reports/{out}": f"dvt report --part {part}"
                                                     for part, out in PARTS.items()}
    assert {p: c for p, c in dvc.items() if p not in report} == {p: c for p, c in smk.items() if p not in report}


def test_both_engines_train_and_measure_every_run_once_per_seed(tmp_path):
    for name in ("dvc.yaml", "workflow", "reports/templates"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / "configs" / "cluttered-3seeds.yaml", tmp_path / "params.yaml")
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=engine_env())
    dvc, smk = dvc_jobs(tmp_path), snakemake_jobs(tmp_path)
    runs = list(yaml.safe_load((tmp_path / "params.yaml").read_text())["runs"])
    for stage, file in (("train", "checkpoint.pt"), ("collect", "logits.parquet"), ("budget", "eval.json"),
                        ("policies", "policies.json"), ("speed", "speed.json")):
        made = {p: c for p, c in dvc.items() if p.startswith("runs/") and p.endswith(file)}
        assert made == {f"runs/{r}/seed{s}/{file}": f"dvt {stage} --run {r} --seed {s}" + (" --restart" if stage == "train" else "")
                        for r in runs for s in (42, 43, 44)}
    # A model's cost does not depend on its seed: one flops job per run.
    assert {p for p in dvc if p.endswith("flops.json")} == {f"runs/{r}/flops.json" for r in runs}
    report = {p for p in smk if p.startswith("reports/")}
    assert {p: c for p, c in dvc.items() if p not in report} == {p: c for p, c in smk.items() if p not in report}


def test_snakemake_builds_only_what_a_table_needs():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    single = [r for r, rc in params["runs"].items() if len(rc.get("grids", [])) == 1 or rc.get("baseline")]
    assert any(params["runs"][r].get("baseline") for r in single)  # the reference CNN is in Table 1 too
    jobs = snakemake_jobs(REPO, "reports/table1.md")
    # Table 1 shows the one-exit runs: they train, nothing else does, and no other table renders.
    trained = {p.split("/")[1] for p in jobs if p.endswith("checkpoint.pt")}
    assert trained == set(single)
    assert not any(p.startswith("reports/") and p != "reports/table1.md" for p in jobs)
    assert not any(p.endswith("speed.json") for p in jobs)


def test_the_policies_page_needs_only_the_cascades():
    """Every cascade has its section on the policies page; the one-exit runs are not trained for it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cascades = {r for r, rc in params["runs"].items() if len(rc.get("grids", [])) > 1}
    assert {"dvt", "dvt_no_reuse"} <= cascades
    jobs = snakemake_jobs(REPO, "reports/policies.md")
    assert {p.split("/")[1] for p in jobs if p.endswith("checkpoint.pt")} == cascades
    assert {p for p in jobs if p.endswith("policies.json")} == {f"runs/{r}/seed42/policies.json" for r in cascades}
    assert not any(p.endswith("speed.json") for p in jobs)


def test_schema_file_is_the_one_derived_from_the_config_dataclasses():
    committed = yaml.safe_load((REPO / "workflow" / "schemas" / "params.schema.yaml").read_text())
    assert committed == params_schema(), "regenerate: python -m dvt.schema > workflow/schemas/params.schema.yaml"


def test_schema_accepts_every_shipped_params_file_and_refuses_an_unknown_key():
    import jsonschema

    schema = params_schema()
    files = [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
    for path in files:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load((REPO / "params.yaml").read_text())
    bad["train"]["lrr"] = 1
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as err:
        assert "lrr" in err.message
    else:
        raise AssertionError("the schema accepted an unknown key")


def test_snakemake_reports_a_params_error_once_before_any_job(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["lr"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = subprocess.run([str(BIN / "snakemake"), "-n", "--configfile", str(bad)], cwd=REPO,
                         capture_output=True, text=True, env=engine_env())
    assert out.returncode == 2
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "train.lr" in line]
    assert lines == [f"snakemake: error in {bad}: train.lr = -1.0 is not allowed: must be > 0"]
    assert "Building DAG" not in out.stdout + out.stderr


def test_snakemake_refuses_config_overrides_it_cannot_pass_on():
    out = subprocess.run([str(BIN / "snakemake"), "-n", "--config", "train={lr: 0.01}"], cwd=REPO,
                         capture_output=True, text=True, env=engine_env())
    assert out.returncode != 0
    assert "--config cannot set dvt's nested keys" in out.stdout + out.stderr


def test_another_params_file_reaches_every_command(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["runs"] = {"only": {"grids": [7]}}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(params))
    jobs = snakemake_jobs(REPO, args=("--forceall", "--configfile", str(other)))
    assert jobs["runs/only/seed42/checkpoint.pt"] == f"dvt train --params {other} --run only --seed 42 --restart"
    assert all(f"--params {other}" in cmd for cmd in jobs.values())
    assert not any("/dvt/" in p for p in jobs)  # the default runs are gone, not merged in


def test_both_engines_declare_the_same_params_for_each_stage():
    """An edit must re-run the same jobs under either engine: dvc.yaml's `params:` of each stage and the
    `settings(...)` of the Snakemake rule of the same name list the same keys."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    declared = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S)", rules + "\nEND", re.M | re.S)}
    for name in ("fetch", "train", "flops", "collect", "budget", "speed"):
        body = stages[name].get("do", stages[name])
        dvc = sorted(p.replace("${item.run}", "{run}").replace("${key}", "{run}") for p in body["params"])
        call = re.search(r"settings=settings\((.*?)\),\n", declared[name], re.S)
        assert call, name
        assert dvc == sorted(re.findall(r'"([^"]+)"', call.group(1))), name


def test_snakemake_lint_finds_nothing():
    """Issue #33: it used to exit 1 asking for a conda environment per rule (workflow/envs/dvt.yaml now)."""
    out = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True,
                         env=engine_env())
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr
    assert not re.findall(r"^\s+\* (.+?):$", out.stdout + out.stderr, re.M)
