"""Every generated block of the README and docs/ equals what `benchmarks/update_readme.py` makes of the
committed files alone: the summaries under results/summary/ (accuracy per config, split and episode set;
the adaptation sidecars; the analysed head's confusions; the scale benchmark's rows), the experiment
configs, the head registry and the shipped calibrations. A block edited by hand, a summary changed
without regenerating, or a change to a config, a head's docstring or a calibration not followed by
`python benchmarks/update_readme.py --summaries-only` fails here, naming the block."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "benchmarks" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UPDATE_README = generator()


def committed_block(path: Path, name: str) -> str:
    found = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", path.read_text(), flags=re.S)
    assert found, f"{path} has no {name} block"
    return found.group(1)


def test_every_block_in_the_docs_is_one_the_generator_knows():
    """A block added to a page without a generator would never be checked."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {name for page in pages for name in re.findall(r"<!-- ([a-z-]+):start -->", page.read_text())}
    assert found == set(UPDATE_README.BLOCKS)


@pytest.mark.parametrize("name", list(UPDATE_README.BLOCKS))
def test_a_generated_block_equals_what_the_committed_summaries_give(name):
    expected = UPDATE_README.blocks_from_summaries([name])[name]
    committed = committed_block(ROOT / UPDATE_README.BLOCKS[name], name)
    assert committed == expected, (
        f"{UPDATE_README.BLOCKS[name]}'s {name} block is not what results/summary/ gives: run "
        f"`python benchmarks/update_readme.py --summaries-only --only {name}` (or refresh the summaries with "
        "--results) and commit the result"
    )


def test_a_changed_summary_changes_its_block(tmp_path):
    """The check above can fail: one accuracy moved by a point moves the README's headline."""
    folder = tmp_path / "summary"
    folder.mkdir()
    for path in (ROOT / "results" / "summary").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    summary = pd.read_csv(folder / "accuracy.csv")
    row = (summary["method"] == UPDATE_README.BASELINE) & (summary["episode_set"] == "novel-5w5s")
    summary.loc[row, "accuracy"] -= 0.01
    summary.to_csv(folder / "accuracy.csv", index=False)
    before = UPDATE_README.blocks_from_summaries(["headline"])["headline"]
    after = UPDATE_README.blocks_from_summaries(["headline"], folder)["headline"]
    assert before != after


def test_the_summaries_give_the_figures_the_per_episode_results_give():
    """The blocks are made from split means: the across-split means, intervals, paired differences and
    shift drops they give equal harness.results' figures from the per-episode rows themselves."""
    from fsl.harness.results import across_splits, split_drops

    rng = np.random.default_rng(0)
    rows = []
    for method in (UPDATE_README.BASELINE, "other", "third"):
        for split in (0, 1, 2):
            for episode_set in ("novel-5w5s", "novel-5w5s+rerendered"):
                accuracy = rng.uniform(0.4, 1.0, 30)
                rows += [{"method": method, "split": split, "episode_set": episode_set, "episode": e,
                          "accuracy": a, "transductive": False} for e, a in enumerate(accuracy)]  # fmt: skip
    frame = pd.DataFrame(rows)
    summary = UPDATE_README.split_means(UPDATE_README.summarise(frame, {}))
    ours = across_splits(summary, UPDATE_README.BASELINE).set_index(["method", "episode_set"])
    theirs = across_splits(frame, UPDATE_README.BASELINE).set_index(["method", "episode_set"])
    for column in ("accuracy", "ci95", "difference", "difference_ci95"):
        np.testing.assert_allclose(ours[column], theirs.loc[ours.index, column], atol=1e-12)
    for method in ("other", "third"):
        ours = split_drops(summary, method, "novel-5w5s+rerendered", "novel-5w5s")
        theirs = split_drops(frame, method, "novel-5w5s+rerendered", "novel-5w5s")
        assert ours.keys() == theirs.keys()
        np.testing.assert_allclose(list(ours.values()), list(theirs.values()), atol=1e-12)


def test_refreshing_some_configs_keeps_every_other_row_and_the_columns(tmp_path):
    """`update_readme.py --configs NAME`: the named config's rows join the committed summary, whose
    other rows and columns stay byte for byte as they were (the split means read back carry helper
    columns that must not be written)."""
    folder = tmp_path / "summary"
    folder.mkdir()
    for path in (ROOT / "results" / "summary").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    before = (folder / "accuracy.csv").read_text().splitlines()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"method": "new-config", "split": 0, "episode_set": "novel-5w5s", "episode": np.arange(20),
                          "accuracy": rng.uniform(0.5, 1.0, 20), "transductive": False})  # fmt: skip
    old = UPDATE_README.read_summary(folder)
    UPDATE_README.write_summary(UPDATE_README.merged(old, UPDATE_README.summarise(frame, {}), []), folder)
    after = (folder / "accuracy.csv").read_text().splitlines()
    assert after[0] == before[0]  # the same columns
    assert [line for line in after if not line.startswith("new-config,")] == before
    assert sum(line.startswith("new-config,0,novel-5w5s,20,") for line in after) == 1
