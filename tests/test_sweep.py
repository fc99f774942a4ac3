from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fsl.cli.main import main
from fsl.config import load_config
from fsl.episodes.frozen import EpisodeSet
from fsl.errors import FslError
from fsl.harness.sweep import parse_grid, sweep

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
        parse_grid(["method_options.C=0.000001,10"]),
        catalog,
        ("val-2w5s",),
        root / "episodes",
        root / "store",
        tmp_path / "ckpt",
        tmp_path / "runs",
        progress=False,
    )
    assert reads and all(name.startswith("articleType-val-") for name in reads)
    assert result.chosen.method_options["C"] == 10  # C = 1e-6 leaves every logit at 0: chance
    assert result.scores[1][1] > result.scores[0][1]
    assert "{'method_options.C': 10} - {'method_options.C': 1e-06}: " in result.verdict and "paired" in result.verdict


def test_the_cli_writes_the_choice_then_tests_it_and_the_results_say_how_it_was_chosen(
    twelve_classes, tmp_path, reads, capsys
):
    root, _ = twelve_classes
    (tmp_path / "probe.yaml").write_text(PROBE)
    common = [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(root / "episodes"),
        "--store-root",
        str(root / "store"),
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
    assert "chosen by `fsl sweep` on validation classes only (val-2w5s)" in text and "C': 1e-06" in text
    assert load_config(chosen).method_options["C"] == 10
    sidecar = (tmp_path / "res" / "probe--method_options.C-10.config.yaml").read_text()
    assert sidecar.startswith("# chosen on: validation (val-2w5s), by fsl sweep")


def test_a_sweep_refuses_to_choose_on_novel_episodes_before_scoring_anything(twelve_classes, tmp_path, reads):
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    with pytest.raises(
        FslError, match="fsl sweep chooses on validation classes only; 'novel-5w5s' is drawn from the 'novel'"
    ):
        sweep(
            load_config(config_path),
            parse_grid(["method_options.C=1,10"]),
            catalog,
            ("novel-5w5s",),
            root / "episodes",
            root / "store",
            tmp_path / "ckpt",
            tmp_path / "runs",
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
            parse_grid(grid),
            catalog,
            ("val-2w5s",),
            root / "episodes",
            root / "store",
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
    assert "not separable on validation" in separability(
        [{"C": 1}, {"C": 2}], [base, close], int(close.mean() > base.mean())
    )
    assert separability([{"C": 1}, {"C": 2}], [base, clear], 1).startswith("the chosen point beats the runner-up")
    assert build_parser().parse_args(["sweep", "x.yaml", "--grid", "method_options.C=1,2"]).runs == "runs/sweep"


def test_a_bad_value_last_in_a_grid_is_refused_before_any_point_runs(twelve_classes, tmp_path, reads):
    """The good points used to run, then the last one ended in a traceback: every point is checked first."""
    root, catalog = twelve_classes
    config_path = tmp_path / "probe.yaml"
    config_path.write_text(PROBE)
    with pytest.raises(FslError, match="head linear_probe C must be a finite number in"):
        sweep(
            load_config(config_path),
            parse_grid(["method_options.C=1,10,abc"]),
            catalog,
            ("val-2w5s",),
            root / "episodes",
            root / "store",
            tmp_path / "ckpt",
            tmp_path / "runs",
            progress=False,
        )
    assert reads == []  # no episode set was read
