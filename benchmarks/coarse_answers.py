"""Coarse answers among close neighbours: the own-categories default answering a parent category where
its rule refuses every category under it (fsl/inference/classifier.py, `Hierarchy`), against the same
rule answering "unknown" there, paired on the frozen hard open-set episodes (`fsl episodes`: each
untaught class a sibling of a taught one, fsl/episodes/siblings.py).

Per split, DEFAULT_HEAD (image features) answers through the one support-set core as `fsl predict
--support` does: the calibration's threshold fitted with known negatives, and the negatives (the class
means of the selection pool's classes: base ∪ validation, never a novel one). The parents are the
catalog's (each articleType's subCategory), as a nested support folder would give them. Two ways to
read `novel-hard-7w5s` (5 + 2 classes, 15 queries each):

- siblings taught: all 7 classes taught, so each episode holds two pairs of taught siblings;
- 5 taught, 2 untaught siblings: the open-set episode (a parent answer for an untaught photo needs two
  taught categories under its parent, which only some episodes hold).

Each photo's answer is right (its category), right at the parent (a parent answer naming its parent),
"unknown" (right for an untaught photo), or wrong (a category or a parent it is not of). Hierarchical
accuracy is the share answered right at some level. Nothing is chosen: the rule's parts are the
product's (`fsl calibrate`'s thresholds, read at the count of parents for a parent). The calibration
of split 0 is the shipped one; another split's is fitted on its own selection classes, as in
benchmarks/hard_open_set.py. Offline encoder, real data.

    python benchmarks/coarse_answers.py [--data DIR] [--splits 0 1 2 3 4]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from hard_open_set import DefaultHead, cell

from fsl.episodes.siblings import HARD_TAUGHT, parents_of
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import load_episode_set
from fsl.harness.negatives import class_means
from fsl.inference.classifier import Hierarchy, SupportSetClassifier
from fsl.inference.heads import DEFAULT_HEAD
from fsl.inference.negatives import KnownNegatives
from fsl.store.rows import store_rows

OUTCOMES = ("right", "right at the parent", "unknown", "wrong")
SHARES = (0.6, 0.7, 0.8, 0.9)
ARRANGEMENTS = {"siblings taught": HARD_TAUGHT + 2, "5 taught, 2 untaught siblings": HARD_TAUGHT}


@dataclass
class Queries:
    """Every query of a set's episodes, flat: its outcome (index into OUTCOMES) under the coarse and the
    flat rule, whether its class was taught, whether two taught categories or more share its parent,
    the share of its best category's confidence within that category's parent (1 alone), whether the
    best category shares its parent, and its episode."""

    coarse: np.ndarray
    flat: np.ndarray
    taught: np.ndarray
    parent_taught_twice: np.ndarray
    share: np.ndarray
    same_parent: np.ndarray
    episode: np.ndarray

    def shares(self, outcome: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """[E', 4] the share of each outcome among each episode's `chosen` photos (episodes with some)."""
        count = self.episode.max() + 1
        totals = np.bincount(self.episode[chosen], minlength=count)
        counts = [np.bincount(self.episode[chosen & (outcome == k)], minlength=count) for k in range(len(OUTCOMES))]
        return (np.stack(counts, 1) / np.maximum(totals, 1)[:, None])[totals > 0]


def outcome(answer, true: str, parents: dict[str, str], level: str) -> int:
    """The index into OUTCOMES of an answer read at `level` (the flat rule reads a parent as "unknown")."""
    if level == "unknown":
        return 2
    if level == "parent":
        return 1 if answer.label == parents[true] else 3
    return 0 if answer.label == true else 3


def answer_set(head, calibration, image, ids, episode_set, n_taught, negatives, parents, choosing) -> Queries:
    """The queries of `episode_set` with its first `n_taught` classes taught, answered by the one core
    with the catalog's parents (on a selection set, the negatives less the episode's classes)."""
    episodes, names = episode_set.episodes, episode_set.meta["classes"]
    k, q = episodes.k_shot, episodes.q_query
    columns = []
    for e in range(len(episodes)):
        classes = [names[c] for c in episodes.classes[e]]
        taught = classes[:n_taught]
        hierarchy = Hierarchy.of_catalog(taught, parents)
        core = SupportSetClassifier(
            head, taught, torch.from_numpy(image[store_rows(ids, episodes.support[e, : n_taught * k])]),
            torch.arange(n_taught).repeat_interleave(k), calibration,
            negatives=negatives.without(classes) if choosing else negatives, hierarchy=hierarchy,
        )  # fmt: skip
        answers = core.answer(torch.from_numpy(image[store_rows(ids, episodes.query[e])]))
        under = {parent: [taught[m] for m in members] for parent, members in hierarchy.groups if parent is not None}
        for i, (answer, true) in enumerate(zip(answers, np.repeat(classes, q))):
            family = under.get(hierarchy.parents[taught.index(answer.best)], [answer.best])
            confidences = dict(answer.top)
            columns.append((
                outcome(answer, true, parents, answer.level),
                outcome(answer, true, parents, "unknown" if answer.level == "parent" else answer.level),
                i < n_taught * q,
                len(under.get(parents[true], [])) >= 2,
                confidences[answer.best] / sum(confidences[c] for c in family),
                parents[true] == parents[answer.best],
                e,
            ))  # fmt: skip
    return Queries(*(np.array(column) for column in zip(*columns)))


def main() -> None:
    setup, args = DefaultHead.from_arguments(__doc__)
    catalog, config, workspace, store = setup.catalog, setup.config, setup.workspace, setup.store
    image, labels, head = setup.image, setup.labels, setup.head
    parents = parents_of(catalog, "articleType")
    print(f"{DEFAULT_HEAD}, offline encoder, as shipped (+ known negatives, the threshold fitted with them); "
          "novel-hard-7w5s, parents: subCategory; share of photos (%), mean over episodes ± 95% CI\n")  # fmt: skip
    print("| split | taught | photos | rule | " + " | ".join(OUTCOMES) + " | right at some level |")
    print("|---|---|---|---|" + "---|" * (len(OUTCOMES) + 1))
    means: dict[tuple[str, str, str], list[np.ndarray]] = {}
    shares_curve: dict[int, list[tuple[str, Queries]]] = {}
    for split_seed in args.splits:
        started = time.perf_counter()
        calibration = setup.calibration(split_seed)
        split = ClassSplit.load(catalog, "articleType", split_seed, workspace.episodes_of(split_seed))
        pool = split.classes("select")
        negatives = KnownNegatives(tuple(pool), class_means(image, labels, pool))
        episode_set = load_episode_set(config, catalog, "novel-hard-7w5s", workspace.episodes_of(split_seed))
        ids, n_way = store.ids, episode_set.episodes.classes.shape[1]
        for arrangement, n_taught in ARRANGEMENTS.items():
            queries = answer_set(head, calibration, image, ids, episode_set, n_taught, negatives, parents, False)
            groups = {"taught": queries.taught}
            if n_taught < n_way:
                groups["untaught"] = ~queries.taught
                groups["untaught, 2+ taught under its parent"] = ~queries.taught & queries.parent_taught_twice
            for photos, chosen in groups.items():
                flat, nested = queries.shares(queries.flat, chosen), queries.shares(queries.coarse, chosen)
                some = [0, 1] if photos == "taught" else [1, 2]  # "unknown" is right for an untaught photo
                for rule, values in (("flat: unknown", flat), ("coarse: the parent", nested)):
                    level = values[:, some].sum(1)
                    row = " | ".join(cell(values[:, k]) for k in range(len(OUTCOMES)))
                    print(f"| {split_seed} | {arrangement} | {photos} ({len(values)} episodes) | {rule} | {row} | "
                          f"{cell(level)} |")  # fmt: skip
                    means.setdefault((arrangement, photos, rule), []).append(np.r_[values.mean(0), level.mean()])
                difference = nested - flat
                row = " | ".join(cell(difference[:, k]) for k in range(len(OUTCOMES)))
                print(f"| {split_seed} | {arrangement} | {photos} | coarse − flat (paired) | {row} | "
                      f"{cell(difference[:, some].sum(1))} |", flush=True)  # fmt: skip
            if n_taught == n_way:
                shares_curve[split_seed] = [("novel-hard-7w5s", queries)]
                selection = load_episode_set(config, catalog, "select-hard-7w5s", workspace.episodes_of(split_seed))
                shares_curve[split_seed].insert(0, ("select-hard-7w5s", answer_set(
                    head, calibration, image, ids, selection, n_taught, negatives, parents, True)))  # fmt: skip
        print(f"<!-- split {split_seed}: {time.perf_counter() - started:.0f} s -->", flush=True)
    if len(args.splits) > 1:
        print(f"\nOver the {len(args.splits)} splits: the mean of the split means ± a 95% t interval over them")
        print("| taught | photos | rule | " + " | ".join(OUTCOMES) + " | right at some level |")
        print("|---|---|---|" + "---|" * (len(OUTCOMES) + 1))
        for (arrangement, photos, rule), values in means.items():
            columns = np.array(values)
            print(f"| {arrangement} | {photos} | {rule} | "
                  + " | ".join(cell(columns[:, k]) for k in range(columns.shape[1])) + " |")  # fmt: skip
    print("\nA category giving way to its parent where its siblings share its confidence (its share of the "
          "parent's below s), siblings taught: % of taught photos moved from a category to the parent")  # fmt: skip
    print("| split | set | s | right → parent | wrong → the right parent | wrong → a wrong parent |")
    print("|---|---|---|---|---|---|")
    for split_seed, sets in shares_curve.items():
        for name, queries in sets:
            answered = queries.taught & (queries.coarse != 1) & (queries.coarse != 2)  # a category answer
            for share in SHARES:
                moved = answered & (queries.share < share)
                right, wrong = moved & (queries.coarse == 0), moved & (queries.coarse == 3)
                print(f"| {split_seed} | {name} | {share:g} | {100 * right.sum() / queries.taught.sum():.2f} | "
                      f"{100 * (wrong & queries.same_parent).sum() / queries.taught.sum():.2f} | "
                      f"{100 * (wrong & ~queries.same_parent).sum() / queries.taught.sum():.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
