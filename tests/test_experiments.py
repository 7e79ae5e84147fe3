"""Experiments on real Optuna studies (SQLite here; PostgreSQL where CIFARKIT_TEST_POSTGRES names a server):
sweeps with paired seeds, workers sharing a study, a worker killed mid-trial, tuning, statistics, reports."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifarkit.cli import main
from cifarkit.experiments.spec import parse_space, parse_vary, recipe_text, split_top_level
from cifarkit.stats import describe, paired_tests

POSTGRES_ENV = "CIFARKIT_TEST_POSTGRES"

QUICK = ["model.name=airbench", "model.kwargs={widths=[16,32,32]}", "preprocess.normalize=meanstd", "optim.l2=0",
         "optim.l2_first_layer=0.0", "schedule.dropout_events=[]", "schedule.milestones=[]", "train.batch_size=64",
         "train.eval_every=20", "train.steps=40", "train.amp=off", "data.dataset=cifar10", "data.val_per_class=10"]


def quick_args(fake_root: Path, *extra: str) -> list[str]:
    args = [a for s in QUICK for a in ("--set", s)]
    return [*args, "--data-dir", str(fake_root), *extra]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def load_study(folder: Path, storage: str | None = None):
    import optuna

    record = json.loads((folder / "sweep.json").read_text())
    return optuna.load_study(study_name=record["name"], storage=storage or f"sqlite:///{folder / 'study.db'}")


def cells_by_state(study) -> dict[tuple[int, int], list[str]]:
    out: dict[tuple[int, int], list[str]] = {}
    for t in study.trials:
        params = t.system_attrs.get("fixed_params") or t.params
        out.setdefault((params["variant"], params["seed"]), []).append(t.state.name)
    return out


# -- parsing ----------------------------------------------------------------------------------------------------
def test_vary_values_split_at_top_level_commas_or_bars():
    assert split_top_level("[32,128,128],[64,256,256]", ",") == ["[32,128,128]", "[64,256,256]"]
    assert parse_vary("model.kwargs.widths=[32,128,128],[64,256,256]").raw == ("[32,128,128]", "[64,256,256]")
    assert parse_vary("optim.name=sgd|adamw").raw == ("sgd", "adamw")
    assert parse_vary('x.y="a,b",c').raw == ('"a,b"', "c")


@pytest.mark.parametrize("text", ["optim.lr", "optim.lr=", "=1,2", "optim.lr=1,,2", "optim.lr=1,1"])
def test_bad_vary_is_a_clear_error(text):
    from cifarkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--vary"):
        parse_vary(text)


def test_space_kinds():
    lr = parse_space("optim.lr=log:0.1:3")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 0.1, 3.0, True)
    assert parse_space("train.batch_size=64:512").kind == "int"
    widths = parse_space("model.kwargs.widths=[32,128,128]|[64,256,256]")
    assert widths.kind == "categorical" and widths.choices == ("[32,128,128]", "[64,256,256]")


@pytest.mark.parametrize("text, message", [("optim.lr=1:0", "below"), ("optim.lr=log:0:1", "positive"),
                                           ("optim.lr=1", "expected"), ("optim.lr=a:b", "not a finite number"),
                                           ("optim.lr=nan:1", "not a finite number"), ("optim.lr=a||b", "distinct")])
def test_bad_space_is_a_clear_error(text, message):
    from cifarkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_space(text)


def test_recipe_text_round_trips(tmp_path):
    from cifarkit.config import load_config

    path = tmp_path / "best.toml"
    path.write_text(recipe_text("fast10-cpu", ["optim.lr=0.5", "model.kwargs.widths=[16,32,32]", "train.tta=true"],
                                "tuned"))
    config = load_config(str(path))
    assert config.optim.lr == 0.5 and config.model.kwargs["widths"] == [16, 32, 32] and config.train.tta
    assert config.train.budget_seconds == load_config("fast10-cpu").train.budget_seconds  # the rest: inherited


# -- statistics ----------------------------------------------------------------------------------------------------
def test_describe_matches_a_hand_computation():
    values = [0.80, 0.82, 0.84]
    d = describe(values)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.82)
    assert d["std"] == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) from a table
    assert d["ci95"] == pytest.approx([0.82 - half, 0.82 + half])
    assert describe([0.5])["ci95"] is None and describe([None, 0.5])["n"] == 1


def test_paired_tests_match_scipy_and_drop_missing_pairs():
    from scipy import stats

    a = [0.71, 0.74, 0.69, 0.73, 0.75, 0.70]
    b = [0.73, 0.75, 0.72, 0.74, 0.78, 0.71]
    out = paired_tests(a, b)
    assert out["pairs"] == 6 and out["mean_difference"] == pytest.approx(np.mean(np.subtract(b, a)))
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert out["t_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(2 / 2**6)  # exact: all six differences positive
    assert paired_tests([*a, None], [*b, 0.9])["pairs"] == 6
    same = paired_tests(a, a)
    assert same["wilcoxon_p"] == 1.0 and same["t_p"] == 1.0


def test_same_distribution_is_rarely_significant():
    rng = np.random.default_rng(0)
    p = [paired_tests(list(rng.normal(0.8, 0.01, 10)), list(rng.normal(0.8, 0.01, 10)))["wilcoxon_p"]
         for _ in range(200)]
    assert 0.01 < np.mean(np.array(p) < 0.05) < 0.10  # about 5%, as a test at the 5% level should be


# -- sweeps --------------------------------------------------------------------------------------------------------
def test_sweep_runs_every_cell_once_with_paired_seeds_and_reports(tmp_path, fake_root, capsys):
    out = tmp_path / "runs"
    args = ["sweep", *quick_args(fake_root), "--vary", "optim.lr=0.1,0.3", "--seeds", "2", "--out-dir", str(out),
            "--name", "lr"]
    assert main(args) == 0
    folder = out / "lr"
    study = load_study(folder)
    assert cells_by_state(study) == {(v, s): ["COMPLETE"] for v in (0, 1) for s in (0, 1)}
    configs = {(v, s): json.loads((folder / "trials" / name / f"seed{s}" / "config.json").read_text())
               for v, name in enumerate(["v0-lr-0.1", "v1-lr-0.3"]) for s in (0, 1)}
    assert configs[0, 1]["train"]["seed"] == configs[1, 1]["train"]["seed"] == 1  # paired: seed i for every variant
    assert configs[1, 0]["optim"]["lr"] == 0.3
    # same seed, same shapes: the same initial weights (the first checkpoint differs only by training)
    report = json.loads((folder / "report" / "summary.json").read_text())
    rows = report["variants"]
    assert [r["variant"] for r in rows] == ["v0-lr-0.1", "v1-lr-0.3"] and rows[1]["test_top1"]["n"] == 2
    assert "vs_first" in rows[1]["val_top1"] and (folder / "report" / "curves.png").stat().st_size > 1000
    assert (folder / "report" / "finals.png").is_file() and (folder / "report" / "summary.csv").is_file()
    assert "| v1-lr-0.3 | 2 |" in capsys.readouterr().out

    # the same command again: nothing runs, nothing changes
    before = {p: p.stat().st_mtime_ns for p in folder.glob("trials/*/*/results.json")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.glob("trials/*/*/results.json")} == before
    assert len(load_study(folder).trials) == 4


def test_same_seed_gives_same_initial_weights_across_variants(tmp_path, fake_root):
    """The paired protocol: variants that only change the optimizer start from identical weights."""
    import torch

    from cifarkit.config import load_config
    from cifarkit.train.loop import Trainer

    weights = []
    for lr in ("0.1", "0.3"):
        config = load_config("elu-seed", [*QUICK, f"optim.lr={lr}", f"data.data_dir={json.dumps(str(fake_root))}",
                                          f"train.out_dir={json.dumps(str(tmp_path))}", f"train.run_name=lr{lr}"])
        weights.append(Trainer(config, log=lambda _: None).run.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _variant(name: str, overrides: list[str], test: list[float | None]) -> dict:
    return {"name": name, "overrides": overrides,
            "runs": [{"seed": i, "results": None if t is None else {"test": {"top1": t, "loss": 1.0},
                                                                     "val": {"top1": t, "loss": 1.0}},
                      "metrics": []} for i, t in enumerate(test)]}


def test_factor_effects_pair_each_setting_with_the_others_held_fixed():
    from scipy import stats

    from cifarkit.experiments.report import effects_table, factor_effects, summarize

    a, b = "model.kwargs.activation", "model.kwargs.batchnorm"
    relu_bn = [0.50, 0.47, 0.49, 0.52]
    variants = [_variant("v0", [f"{a}=elu", f"{b}=false"], [0.60, 0.62, 0.61, 0.63]),
                _variant("v1", [f"{a}=elu", f"{b}=true"], [0.61, 0.62, 0.60, 0.64]),
                _variant("v2", [f"{a}=relu", f"{b}=false"], [0.40, 0.41, 0.43, None]),
                _variant("v3", [f"{a}=relu", f"{b}=true"], relu_bn)]
    effects = factor_effects(summarize(variants))
    pairs = {(e["setting"], e["from"], e["to"], tuple(e["at"].values())): e for e in effects}
    assert set(pairs) == {(a, "elu", "relu", ("false",)), (a, "elu", "relu", ("true",)),
                          (b, "false", "true", ("elu",)), (b, "false", "true", ("relu",))}
    bn_relu = pairs[b, "false", "true", ("relu",)]
    assert (bn_relu["reference"], bn_relu["variant"]) == ("v2", "v3")
    assert bn_relu["test_top1"]["pairs"] == 3  # relu without batchnorm misses seed 3: that pair is dropped
    assert bn_relu["test_top1"]["mean_difference"] == pytest.approx(np.mean(np.subtract(relu_bn[:3], [.40, .41, .43])))
    assert bn_relu["test_top1"]["t_p"] == pytest.approx(stats.ttest_rel(relu_bn[:3], [.40, .41, .43]).pvalue)
    relu_at_bn = pairs[a, "elu", "relu", ("true",)]
    assert relu_at_bn["test_top1"]["mean_difference"] == pytest.approx(np.mean(relu_bn) - 0.6175)
    table = effects_table(effects)
    assert "| batchnorm | false → true | activation=relu | 3 | +7.33 |" in table
    # one varied setting: its effect is the comparison against the first variant, nothing to add
    assert factor_effects(summarize(variants[::2])) == []


def test_activation_profiles_average_each_layer_over_finished_seeds():
    from cifarkit.experiments.report import activation_profiles, profiles_table

    variant = _variant("v0-elu", ["model.kwargs.activation=elu"], [0.6, 0.6, None])
    logs = [{"activations/layer1": -0.1, "activations/layer2": 0.3},
            {"activations/layer1": -0.3, "activations/layer2": 0.1},
            {"activations/layer1": 9.0, "activations/layer2": 9.0}]  # an unfinished seed: left out
    for run, last in zip(variant["runs"], logs, strict=True):
        run["metrics"] = [{"step": 10, "activations/median_unit": 5.0, "activations/layer1": 5.0},
                          {"step": 20, "activations/median_unit": 0.0, "activations/layer1_mean": 7.0, **last}]
    profile, = activation_profiles([variant])
    assert profile["seeds"] == 2 and profile["median_unit_per_layer"] == pytest.approx([-0.2, 0.2])
    assert "| v0-elu | 2 | -0.200 | +0.200 |" in profiles_table([profile])
    assert activation_profiles([_variant("v0", [], [0.5])]) == []  # nothing logged: no profile


def test_a_two_setting_sweep_reports_each_settings_paired_effect(tmp_path, fake_root, capsys):
    """A grid of a real setting (the learning rate) and one that changes nothing computed: the no-op's effect is
    exactly zero at each learning rate (identical runs: every p-value is 1), and the learning rate's effect is
    the same whichever no-op value."""
    assert main(["sweep", *quick_args(fake_root), "--set", "train.log_activations=true", "--vary",
                 "optim.lr=0.1,0.3", "--vary", "train.checkpoint_minutes=10,20", "--seeds", "2", "--out-dir",
                 str(tmp_path), "--name", "grid"]) == 0
    summary = json.loads((tmp_path / "grid" / "report" / "summary.json").read_text())
    same_lr = summary["variants"][1]  # lr 0.1, checkpoint_minutes 20: against the first variant, no difference
    for key in ("test_top1", "val_top1", "val_loss"):
        assert same_lr[key]["vs_first"]["mean_difference"] == 0 and same_lr[key]["vs_first"]["wilcoxon_p"] == 1.0
    effects = summary["factor_effects"]
    noop = [e for e in effects if e["setting"] == "train.checkpoint_minutes"]
    lr = [e for e in effects if e["setting"] == "optim.lr"]
    assert len(noop) == len(lr) == 2
    assert all(e["test_top1"]["mean_difference"] == 0 and e["test_top1"]["wilcoxon_p"] == 1.0 for e in noop)
    assert lr[0]["test_top1"]["mean_difference"] == lr[1]["test_top1"]["mean_difference"]
    assert [p["seeds"] for p in summary["activation_profiles"]] == [2, 2, 2, 2]
    assert (tmp_path / "grid" / "report" / "activation-layers.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "Effect of each setting" in out and "| checkpoint_minutes | 10 → 20 | lr=0.1 | 2 | +0.00 |" in out


@pytest.mark.parametrize("args, message", [
    (["--vary", "optim.lrr=0.1,0.2"], "unknown setting"),
    (["--vary", "optim.lr="], "one or more values"),
    (["--vary", "optim.lr=0.1,-1"], "optim.lr must be > 0"),
    (["--vary", "optim.lr=0.1", "--storage", "postgresql://u:secret@127.0.0.1:1/db"], "cannot open the study storage"),
    ([], "at least one --vary"),
])
def test_bad_sweep_input_is_one_line_before_anything_runs(tmp_path, fake_root, capsys, args, message):
    assert main(["sweep", *quick_args(fake_root), *args, "--out-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "secret" not in err and len(err.strip().splitlines()) == 1
    assert not any(p.name.endswith(".pt") for p in tmp_path.rglob("*"))


def test_a_study_made_by_another_experiment_is_refused(tmp_path, fake_root, capsys):
    base = ["sweep", *quick_args(fake_root), "--seeds", "1", "--name", "shared", "--storage",
            f"sqlite:///{tmp_path / 'shared.db'}"]
    assert main([*base, "--vary", "optim.lr=0.1", "--out-dir", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    # another machine (another folder), the same study name, another experiment: the study itself refuses
    assert main([*base, "--vary", "optim.lr=0.2", "--out-dir", str(tmp_path / "b")]) == 1
    assert "created by a different experiment" in capsys.readouterr().err


def _storages(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'workers.db'}"]
    if os.environ.get(POSTGRES_ENV):
        urls.append(os.environ[POSTGRES_ENV])
    return urls


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_sweep_and_never_run_a_cell_twice(tmp_path, fake_root, backend):
    if backend == "postgresql" and not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"no PostgreSQL server for the tests (set {POSTGRES_ENV} to a database URL)")
    storage = _storages(tmp_path)[-1 if backend == "postgresql" else 0]
    name = f"workers-{os.getpid()}-{time.time_ns()}"  # a fresh study in a shared database
    args = ["sweep", *quick_args(fake_root), "--vary", "optim.lr=0.1,0.2,0.3", "--seeds", "2", "--out-dir",
            str(tmp_path), "--name", name, "--storage", storage]
    workers = [subprocess.Popen([sys.executable, "-m", "cifarkit", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n-----\n".join(log[-3000:] for log in logs)
    study = load_study(tmp_path / name, storage)
    assert cells_by_state(study) == {(v, s): ["COMPLETE"] for v in range(3) for s in range(2)}
    started = [line for log in logs for line in log.splitlines() if ": training in " in line]
    assert len(started) == 6 and len(set(started)) == 6  # every cell trained by exactly one worker
    for results in (tmp_path / name).glob("trials/*/*/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in results.read_text().splitlines()]
        assert steps == [20, 40]


@pytest.mark.slow
def test_a_killed_worker_trial_is_finished_from_its_checkpoint_by_the_next(tmp_path, fake_root):
    args = ["sweep", *quick_args(fake_root), "--set", "train.steps=300", "--set", "train.eval_every=100",
            "--set", "train.checkpoint_every=10", "--vary", "optim.lr=0.1", "--seeds", "1", "--out-dir", str(tmp_path),
            "--name", "killed"]
    first = subprocess.Popen([sys.executable, "-m", "cifarkit", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "trials" / "v0-lr-0.1" / "seed0" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.pt"))
    assert 0 < killed_at < 300

    second = run_cli(args)
    assert second.returncode == 0, second.stderr
    assert "its worker is gone" in second.stdout and "continuing" in second.stdout
    assert f"resuming {checkpoints.parent} from step" in second.stdout
    study = load_study(tmp_path / "killed")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    results = json.loads((checkpoints.parent / "results.json").read_text())
    assert results["steps"] == 300
    steps = [json.loads(line)["step"] for line in (checkpoints.parent / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300]  # one line per evaluation: the resumed run did not repeat one


@pytest.mark.slow
def test_ctrl_c_requeues_the_trial_and_the_same_command_continues_it(tmp_path, fake_root):
    args = ["sweep", *quick_args(fake_root), "--set", "train.steps=300", "--set", "train.eval_every=100",
            "--vary", "optim.lr=0.1", "--seeds", "1", "--out-dir", str(tmp_path), "--name", "stopped"]
    first = subprocess.Popen([sys.executable, "-m", "cifarkit", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "stopped" / "trials" / "v0-lr-0.1" / "seed0"
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    log = first.communicate(timeout=120)[0]
    assert first.returncode == 130, log
    second = run_cli(args)
    assert second.returncode == 0 and "continuing" in second.stdout, second.stdout + second.stderr
    study = load_study(tmp_path / "stopped")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].user_attrs["retry_of"] == 0


def test_optuna_dashboard_reads_our_study(tmp_path, fake_root):
    """The studies are plain Optuna studies: optuna-dashboard's own API lists ours and its trials."""
    import io
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    assert main(["sweep", *quick_args(fake_root), "--vary", "optim.lr=0.1,0.2", "--seeds", "1", "--out-dir",
                 str(tmp_path), "--name", "dash"]) == 0
    app = wsgi(f"sqlite:///{tmp_path / 'dash' / 'study.db'}")

    def get(path: str):
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, *_: status.append(s)))
        return status[0], json.loads(body)

    status, studies = get("/api/studies")
    assert status.startswith("200")
    study = next(s for s in studies["study_summaries"] if s["study_name"] == "dash")
    status, detail = get(f"/api/studies/{study['study_id']}")
    assert status.startswith("200") and len(detail["trials"]) == 2
    assert {t["state"] for t in detail["trials"]} == {"Complete"}


# -- tuning --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_writes_a_best_recipe_and_never_looks_at_the_test_split(tmp_path, fake_root, capsys):
    from cifarkit.config import load_config

    args = ["tune", *quick_args(fake_root), "--space", "optim.lr=log:0.05:0.5", "--space",
            "optim.label_smoothing=0:0.2", "--trials", "3", "--out-dir", str(tmp_path), "--name", "t"]
    assert main([*args, "--test-best"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "t"
    for results in folder.glob("trials/*/results.json"):
        assert json.loads(results.read_text())["test"] is None  # tuning never evaluated the test split
    best = load_config(str(folder / "best.toml"))
    assert 0.05 <= best.optim.lr <= 0.5 and best.model.kwargs == {"widths": [16, 32, 32]}
    assert best.recipe == "best" and "extends = \"elu-seed\"" in (folder / "best.toml").read_text()
    assert "test (once" in out and json.loads((folder / "best-test.json").read_text())["test_top1"] >= 0
    assert (folder / "report" / "history.png").is_file()
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(study.trials) == 3 and all(t.intermediate_values for t in study.trials)  # the pruner's input
    # the same command again: the study already holds its trials
    assert main(args) == 0 and len(optuna.load_study(study_name="t", storage=f"sqlite:///{folder / 'study.db'}")
                                   .trials) == 3


def test_tune_refuses_a_recipe_without_a_validation_split(tmp_path, fake_root, capsys):
    assert main(["tune", *quick_args(fake_root, "--set", "data.val_per_class=0"), "--space", "optim.lr=0.1:0.2",
                 "--out-dir", str(tmp_path)]) == 1
    assert "needs a validation split" in capsys.readouterr().err


def test_a_failed_cell_is_recorded_and_retried_on_request(tmp_path, fake_root, capsys):
    """A trial that fails (here: a learning rate that makes the loss non-finite) is recorded with its message
    and the other cells go on; --retry-failed queues it again."""
    args = ["sweep", *quick_args(fake_root), "--vary", "optim.lr=0.1,1e30", "--seeds", "1", "--out-dir",
            str(tmp_path), "--name", "fails"]
    assert main(args) == 1
    study = load_study(tmp_path / "fails")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert "not finite" in study.trials[1].user_attrs["error"]
    assert "--retry-failed" in capsys.readouterr().err
    # not retried unasked; the failure is still said (and the exit status says it)
    assert main(args) == 1 and len(load_study(tmp_path / "fails").trials) == 2
    assert "1 cell(s) of this sweep failed" in capsys.readouterr().err
    assert main([*args, "--retry-failed"]) == 1
    trials = load_study(tmp_path / "fails").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"] and trials[2].user_attrs["retry_of"] == 1


def test_tune_metric_is_loss_or_error_and_names_a_different_study(fake_root):
    from cifarkit.errors import CifarkitError
    from cifarkit.experiments.tune import plan_tuning

    sets = [*QUICK, f"data.data_dir={json.dumps(str(fake_root))}"]
    loss = plan_tuning("elu-seed", sets, ["optim.lr=0.1:0.2"], 3)
    error = plan_tuning("elu-seed", sets, ["optim.lr=0.1:0.2"], 3, metric="error")
    val = {"loss": 0.7, "top1": 0.8}
    assert loss.value(val) == 0.7 and error.value(val) == pytest.approx(0.2)
    assert loss.name != error.name  # another objective: another study
    with pytest.raises(CifarkitError, match="--metric"):
        plan_tuning("elu-seed", sets, ["optim.lr=0.1:0.2"], 3, metric="accuracy")


def test_a_trial_changes_state_for_exactly_one_claimant(tmp_path):
    """The claim is one conditional UPDATE: of several workers racing for a waiting trial, one gets it (Optuna's
    read-then-write lets two SQLite workers both take it)."""
    import optuna
    from optuna.trial import TrialState

    from cifarkit.experiments.study import claim_waiting_trial, open_storage, transition

    study = optuna.create_study(study_name="race", storage=open_storage(f"sqlite:///{tmp_path / 'race.db'}"))
    study.enqueue_trial({"x": 1})
    trial_id = study.get_trials(states=(TrialState.WAITING,))[0]._trial_id
    assert transition(study, trial_id, TrialState.WAITING, TrialState.RUNNING)
    assert not transition(study, trial_id, TrialState.WAITING, TrialState.RUNNING)  # the second claimant loses
    assert claim_waiting_trial(study) is None
    assert study.trials[0].state == TrialState.RUNNING and study.trials[0].datetime_start is not None


def test_optuna_private_api_is_there(tmp_path):
    """Every private Optuna attribute cifarkit uses (experiments/optuna_private.py), on a real SQLite study:
    an Optuna release that moves one fails here, by name, instead of deep inside a sweep."""
    import optuna
    import tomllib

    from cifarkit.experiments import optuna_private as private
    from cifarkit.experiments.study import open_storage

    study = optuna.create_study(study_name="probe", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    study.enqueue_trial({"x": 1.0})
    [frozen] = study.get_trials(deepcopy=False)
    assert isinstance(private.trial_id(frozen), int) and isinstance(private.study_id(study), int)
    assert hasattr(private.rdb_storage(study), "engine")
    assert private.stale_trial_ids(study) == set()
    assert {"trial_id", "state"} <= set(private.trial_table().__table__.columns.keys())
    trial = private.trial_for(study, frozen)
    assert isinstance(trial, optuna.trial.Trial) and private.trial_id(trial) == private.trial_id(frozen)
    private.set_user_attr(study, trial, "worker", "probe")
    assert private.frozen_trial(study, trial).user_attrs["worker"] == "probe"
    assert private.storage(study).get_heartbeat_interval() is not None
    pin = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert f"optuna{private.TESTED_OPTUNA}" in pin["project"]["dependencies"]
