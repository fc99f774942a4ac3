from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fsl.cli.common import workspace_from
from fsl.cli.main import main
from fsl.config import load_config, override
from fsl.episodes.frozen import EpisodeSet
from fsl.errors import FslError
from fsl.harness.sweep import parse_grid, parse_space, sweep
from fsl.paths import Workspace

PROBE = """\
method: linear_probe
method_options: {C: 1.0}
fusion: image
episodes: [novel-5w5s]
encoder: {name: clip, model: FSL-Tiny, pretrained: none}
"""


@pytest.fixture()
def reads(monkeypatch):
    """The names of the episode sets read, in order."""
    names: list[str] = []
    real = EpisodeSet.load.__func__

    def recording(cls, path, *args, **kwargs):
        names.append(Path(path).stem)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(EpisodeSet, "load", classmethod(recording))
    return names


def test_a_two_value_sweep_chooses_on_validation_and_never_reads_novel_sets(twelve_classes, tmp_path, reads):
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    result = sweep(
        load_config(config_path),
        catalog,
        workspace_of(root, tmp_path),
        parse_grid(["method_options.C=0.000001,10"]),
        on=("val-2w5s",),
        progress=False,
    )
    assert reads and all(name.startswith("articleType-val-") for name in reads)
    assert result.chosen.method_options["C"] == 10  # C = 1e-6 leaves every logit at 0: chance
    by_c = {point["method_options.C"]: mean for point, mean, _ in result.scores}  # in trial order: one each
    assert len(result.scores) == 2 and by_c[10] > by_c[1e-6]
    assert "{'method_options.C': 10} - {'method_options.C': 1e-06}: " in result.verdict and "paired" in result.verdict


def catalog_options(root: Path) -> list[str]:
    """The command-line options that point fsl at the twelve-class slice."""
    return ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root", str(root / "store")]


def test_the_cli_writes_the_choice_then_tests_it_and_the_results_say_how_it_was_chosen(
    twelve_classes, tmp_path, reads, capsys
):
    root, _ = twelve_classes
    (tmp_path / "probe.yaml").write_text(PROBE)
    common = [
        *catalog_options(root),
        "--results",
        str(tmp_path / "res"),
        "--runs",
        str(tmp_path / "runs"),
    ]
    assert (
        main(
            [
                "sweep",
                str(tmp_path / "probe.yaml"),
                "--grid",
                "method_options.C=0.000001,10",
                "--on",
                "val-2w5s",
                *common,
            ]
        )
        == 0
    )
    first_novel = next(i for i, name in enumerate(reads) if "novel" in name)
    assert all("val-" in name for name in reads[:first_novel]) and first_novel >= 2
    chosen = tmp_path / "res/sweeps/probe.yaml"
    text = chosen.read_text()
    assert "chosen by `fsl sweep` on selection episodes only (val-2w5s)" in text and "C': 1e-06" in text
    assert load_config(chosen).method_options["C"] == 10
    sidecar = (tmp_path / "res" / "probe--method_options.C-10.config.yaml").read_text()
    assert sidecar.startswith("# chosen on: selection episodes (val-2w5s), by fsl sweep (study probe in sqlite:///")


def test_a_sweep_refuses_to_choose_on_novel_episodes_before_scoring_anything(twelve_classes, tmp_path, reads):
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    with pytest.raises(
        FslError, match="fsl sweep chooses on validation classes only; 'novel-5w5s' is drawn from the 'novel'"
    ):
        sweep(
            load_config(config_path),
            catalog,
            workspace_of(root, tmp_path),
            parse_grid(["method_options.C=1,10"]),
            on=("novel-5w5s",),
            progress=False,
        )
    assert reads == ["articleType-novel-5w5s"]  # looked at once to refuse it, never scored


@pytest.mark.parametrize(
    "grid,message",
    [
        (["method_options.C"], "expected KEY=V1,V2"),
        (["method_options.Cc=1,2"], "head linear_probe has no option 'Cc'"),
        (["batch_size=0,8"], "batch_size must be a positive whole number"),
    ],
)
def test_bad_grids_fail_before_any_work(twelve_classes, tmp_path, grid, message, reads):
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    with pytest.raises(FslError, match=message):
        sweep(
            load_config(config_path),
            catalog,
            workspace_of(root, tmp_path),
            parse_grid(grid),
            on=("val-2w5s",),
            progress=False,
        )
    assert reads == []


def test_a_sweep_says_when_its_best_points_are_not_separable_and_logs_under_runs_sweep():
    from fsl.cli.main import build_parser
    from fsl.harness.sweep import separability

    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 1.0, 300)  # per-episode accuracies of one point
    close = np.clip(base + rng.normal(0, 0.05, 300), 0, 1)  # another point, the same on average
    clear = np.clip(base + 0.1, 0, 1)
    assert "not separable (" in separability([{"C": 1}, {"C": 2}], [base, close], int(close.mean() > base.mean()))
    assert separability([{"C": 1}, {"C": 2}], [base, clear], 1).startswith("separable ({'C': 2} - {'C': 1}: +")
    args = build_parser().parse_args(["sweep", "x.yaml", "--grid", "method_options.C=1,2"])
    assert workspace_from(args).runs_of("sweep") == Path("runs/sweep")


def test_a_bad_value_last_in_a_grid_is_refused_before_any_point_runs(twelve_classes, tmp_path, reads):
    """The good points used to run, then the last one ended in a traceback: every point is checked first."""
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    with pytest.raises(FslError, match="head linear_probe C must be a finite number in"):
        sweep(
            load_config(config_path),
            catalog,
            workspace_of(root, tmp_path),
            parse_grid(["method_options.C=1,10,abc"]),
            on=("val-2w5s",),
            progress=False,
        )
    assert reads == []  # no episode set was read


def workspace_of(root: Path, tmp_path: Path) -> Workspace:
    """The slice's episodes and store; this test's own checkpoints, results and runs."""
    return Workspace(root / "episodes", root / "store", tmp_path / "ckpt", tmp_path / "res", tmp_path / "runs")


def sweep_probe(twelve_classes, tmp_path, config: str = PROBE, name: str = "probe", **options):
    root, catalog = twelve_classes
    (tmp_path / f"{name}.yaml").write_text(config)
    options = {"grid": [], "on": ("val-2w5s",), "progress": False} | options
    return sweep(load_config(tmp_path / f"{name}.yaml"), catalog, workspace_of(root, tmp_path), **options)


def test_tpe_trials_over_a_range_live_in_sqlite_and_a_finished_study_is_not_run_again(twelve_classes, tmp_path):
    import optuna

    space = parse_space(["method_options.C=log:1e-6:10"])
    result = sweep_probe(twelve_classes, tmp_path, space=space, trials=4)
    storage = f"sqlite:///{(tmp_path / 'res/sweeps/studies.db').resolve()}"
    assert result.study == f"probe in {storage}"
    study = optuna.load_study(study_name="probe", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4 and all(1e-6 <= t.params["method_options.C"] <= 10 for t in complete)
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert result.chosen.method_options["C"] == best.params["method_options.C"]
    assert "paired" in result.verdict and len(best.user_attrs["accuracy"]) == 30  # per episode, for the power line
    again = sweep_probe(twelve_classes, tmp_path, space=space, trials=4)  # resumed: nothing left to run
    assert len(optuna.load_study(study_name="probe", storage=storage).trials) == 4
    assert again.chosen == result.chosen


def test_a_study_of_another_question_a_bad_storage_and_a_bad_space_are_one_line_messages(twelve_classes, tmp_path):
    sweep_probe(twelve_classes, tmp_path, grid=parse_grid(["method_options.C=1,10"]))
    with pytest.raises(FslError, match=r"study 'probe' in sqlite:///.* was started for another question \(its space"):
        sweep_probe(twelve_classes, tmp_path, grid=parse_grid(["method_options.C=1,100"]))
    assert sweep_probe(twelve_classes, tmp_path, grid=parse_grid(["method_options.C=1,100"]), study_name="other")
    with pytest.raises(FslError, match=r"^storage 'nosuchdb://x': cannot open it as an Optuna storage \(.*\)$"):
        sweep_probe(twelve_classes, tmp_path, grid=parse_grid(["method_options.C=1"]), storage="nosuchdb://x")
    with pytest.raises(FslError, match="head linear_probe has no option 'Cc'"):
        sweep_probe(twelve_classes, tmp_path, space=parse_space(["method_options.Cc=log:1:2"]), trials=2)
    with pytest.raises(FslError, match="^trials: a search space needs how many points TPE tries"):
        sweep_probe(twelve_classes, tmp_path, space=parse_space(["method_options.C=log:1:2"]))


@pytest.mark.parametrize(
    "text,message",
    [
        ("method_options.C=log:0:1", "LOW > 0"),
        ("method_options.C=float:2:1", "LOW < HIGH"),
        ("method_options.C=int:1:x", "two numbers"),
        ("method_options.C=uniform:1:2", "KIND is float, log"),
        ("method_options.C", "expected KEY=KIND:LOW:HIGH"),
    ],
)
def test_bad_spaces_are_refused_naming_the_argument(text, message):
    with pytest.raises(FslError, match=message):
        parse_space([text])


WORKER = """\
import logging, sys, time
import fsl.harness.sweep as sweeping
from fsl.config import load_config, override
from fsl.data.prepared import load_catalog
from fsl.paths import Workspace

root, storage, delay, heartbeat = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
logging.basicConfig(level=logging.INFO, format="fsl: %(message)s")  # a Python caller that shows the progress
real = sweeping.run_experiment
sweeping.run_experiment = lambda *a, **k: (time.sleep(delay), real(*a, **k))[1]  # a trial long enough to meet
workspace = Workspace(root + "/episodes", root + "/store", root + "/ckpt", root + "/res", root + "/runs")
result = sweeping.sweep(load_config(root + "/probe.yaml"), load_catalog(root + "/dump"), workspace,
                        sweeping.parse_grid(["method_options.C=0.001,0.1,1,10"]), on=("val-2w5s",), progress=True,
                        storage=storage, study_name="shared", heartbeat_s=heartbeat, grace_s=10 * heartbeat)
print("chosen", result.chosen.method_options["C"])
"""
# A grace of ten heartbeats (the shipped default is three): with two, a worker whose heartbeat thread misses
# two beats (two cores shared with other heavy jobs) has its own trial failed as stale under it. The 300 s
# timeouts the kill test met were another cause: a kill before the trial's first heartbeat left a trial
# Optuna never fails (fail_unstarted_trials; the next test makes that window on purpose).


def run_workers(twelve_classes, tmp_path, count: int, delay: float, heartbeat: int = 30):
    import subprocess
    import sys

    root, _ = twelve_classes
    (tmp_path / "probe.yaml").write_text(PROBE)
    for name in ("dump", "episodes", "store"):
        if not (tmp_path / name).exists():
            (tmp_path / name).symlink_to(root / name)
    (tmp_path / "worker.py").write_text(WORKER)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    command = [sys.executable, str(tmp_path / "worker.py"), str(tmp_path), storage, str(delay), str(heartbeat)]
    return storage, [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(count)]  # fmt: skip


def trials_by_state(storage: str) -> dict[str, list]:
    import optuna

    trials = optuna.load_study(study_name="shared", storage=storage).trials  # once the workers made the file
    return {state: [t.params.get("method_options.C") for t in trials if t.state.name == state]
            for state in ("COMPLETE", "RUNNING", "FAIL", "PRUNED")}  # fmt: skip


def test_two_workers_on_one_sqlite_study_run_each_point_once_and_agree(twelve_classes, tmp_path):
    storage, workers = run_workers(twelve_classes, tmp_path, 2, delay=1.5)
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    states = trials_by_state(storage)
    assert sorted(states["COMPLETE"]) == [0.001, 0.1, 1, 10]  # every point scored, each once
    chosen = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(chosen) == 1  # both workers report the same choice
    ran = [line for _, err in outputs for line in err.splitlines() if line.startswith("fsl: trial ")]
    assert len(ran) == 4 and all("fsl: trial " in err for _, err in outputs)  # the work was shared, none twice


def running_trials(database) -> int:
    """Trials running in a study's SQLite file, read without Optuna (which would race the worker
    creating its schema); 0 before the file has its tables."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_sweep_killed_mid_trial_resumes_and_runs_the_lost_point_again(twelve_classes, tmp_path):
    import os
    import signal
    import time

    storage, (first,) = run_workers(twelve_classes, tmp_path, 1, delay=3.0, heartbeat=1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
        if running_trials(tmp_path / "studies.db"):
            break
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    lost = trials_by_state(storage)["RUNNING"]
    assert len(lost) == 1
    _, (second,) = run_workers(twelve_classes, tmp_path, 1, delay=0.0, heartbeat=1)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    states = trials_by_state(storage)
    assert sorted(states["COMPLETE"]) == [0.001, 0.1, 1, 10] and states["FAIL"] == lost and not states["RUNNING"]


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_its_point_run_again(
    twelve_classes, tmp_path
):
    """Optuna's heartbeat never fails a trial that has no heartbeat; a worker killed right after creating
    its trial (here: a trial asked and left, as a SIGKILL there leaves it) must not hold the sweep forever."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    grid = parse_grid(["method_options.C=0.1,1,10"])
    dead = optuna.create_study(storage=storage, study_name="probe", direction="maximize",
                               sampler=optuna.samplers.GridSampler(dict(grid), seed=0))  # fmt: skip
    lost = dead.ask()  # RUNNING, its grid point assigned, no heartbeat ever
    result = sweep_probe(twelve_classes, tmp_path, grid=grid, storage=storage, heartbeat_s=1, grace_s=1)
    trials = optuna.load_study(study_name="probe", storage=storage).trials
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["method_options.C"] for t in complete) == [0.1, 1, 10]  # every point once, the lost one too
    assert any(t.system_attrs.get("failed_trial") == lost.number for t in complete)  # run again as its retry
    assert len(result.scores) == 3


def test_a_trained_config_reports_its_validation_points_and_the_median_pruner_stops_a_hopeless_one(
    twelve_classes, tmp_path, monkeypatch
):
    """The wiring, with training and scoring stood in for: each validation point reaches Optuna as an
    intermediate value; a trial below the median of the earlier ones is pruned and never chosen."""
    import optuna

    import fsl.harness.sweep as sweeping
    from fsl.harness.evaluate import EvalResult

    meta = (
        "method: protonet\nmethod_options: {projection: linear}\nfusion: image\nepisodes: [novel-5w5s]\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\n"
        "train: {steps: 20, lr: 0.001, val_every: 10, val_episodes: val-2w5s}\n"
    )
    quality = {0.001: 0.8, 0.002: 0.9, 0.003: 0.3}  # train.lr -> what its validation points say
    trained = []

    def fake_train(config, *args, on_validation=None, **kwargs):
        trained.append(config.train.lr)
        for step in (10, 20):
            on_validation(step, quality[config.train.lr])  # raises TrialPruned for a hopeless one

    def fake_run(config, *args, **kwargs):
        return [EvalResult(config.name, "val-2w5s", np.full(30, quality[config.train.lr]), {})]

    monkeypatch.setattr(sweeping, "train", fake_train)
    monkeypatch.setattr(sweeping, "run_experiment", fake_run)
    grid = parse_grid(["train.lr=0.001,0.002,0.003"])  # in this order under seed 5: lr 0.003 after two to judge by
    result = sweep_probe(twelve_classes, tmp_path, meta, "meta", grid=grid, seed=5)
    study = optuna.load_study(study_name="meta", storage=f"sqlite:///{(tmp_path / 'res/sweeps/studies.db').resolve()}")
    states = {t.params["train.lr"]: t.state.name for t in study.trials}
    assert states[0.003] == "PRUNED" and sorted(trained) == [0.001, 0.002, 0.003]
    assert [t.params["train.lr"] for t in sorted(study.trials, key=lambda t: t.number)] == [0.001, 0.002, 0.003]
    assert all(t.intermediate_values for t in study.trials)  # every trial reported its points
    assert result.chosen.train.lr == 0.002
    assert [p["train.lr"] for p, _, _ in result.scores] == [0.001, 0.002]  # a pruned point is never a candidate


def test_a_zero_or_negative_trial_count_is_refused_while_the_arguments_are_read(capsys):
    from fsl.cli.main import main

    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as exited:
            main(["sweep", "x.yaml", "--space", "method_options.C=log:1:2", "--trials", bad])
        assert exited.value.code == 2 and "--trials" in capsys.readouterr().err


def test_a_bad_grid_key_names_the_parameter_to_a_caller_and_the_flag_on_the_command_line(
    twelve_classes, tmp_path, capsys
):
    """Library words: `sweep(grid=...)` says "grid ...", `fsl sweep --grid` says "--grid ..."; `override`'s
    own default says "assignments"."""
    root, _ = twelve_classes
    with pytest.raises(FslError) as caught:
        sweep_probe(twelve_classes, tmp_path, grid=parse_grid(["trian.lr=1,2"]))
    assert str(caught.value).startswith("grid trian.lr=...: unknown key 'trian'") and caught.value.parameter == "grid"
    with pytest.raises(FslError, match=r"^assignments trian\.lr=\.\.\.: unknown key"):
        override(load_config(tmp_path / "probe.yaml"), [("trian.lr", 1)])
    argv = ["sweep", str(tmp_path / "probe.yaml"), "--grid", "trian.lr=1,2", "--on", "val-2w5s"]
    assert main([*argv, *catalog_options(root)]) == 2
    assert "fsl sweep: error: --grid trian.lr=...: unknown key 'trian'" in capsys.readouterr().err
