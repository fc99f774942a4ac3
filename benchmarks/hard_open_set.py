""" "None of these" among close neighbours: the own-categories default rule on the frozen hard open-set
episodes (`fsl episodes`: each untaught class a sibling of a taught one, episodes/siblings.py), with and
without a catalog's classes as known negatives (fsl/inference/negatives.py), against the random
open-set episodes the project reported until now.

Per split, DEFAULT_HEAD (image features) answers through the one support-set core, as `fsl predict
--support` does. Known negatives are the class means of the selection pool's classes (base ∪
validation: every class but the novel ones, as `fsl calibrate` uses them), on selection episodes
(`select-hard-7w5s`, over that pool) those outside the episode. Six rules, paired on the same episodes:

- today: the calibration's "unknown" threshold for 5 taught categories, no negatives;
- today's threshold + negatives: the same threshold, and the negatives at the product's margin;
- as shipped: the negatives at the product's margin, with the calibration's threshold for 5 taught
  fitted with negatives answering (`fsl calibrate`: the same false-accept target on the open-set
  selection episodes, so it lets more taught photos through); what `fsl predict --support` does;
- threshold re-chosen: the threshold that turns the most untaught photos away on the selection
  episodes while answering TAUGHT_FLOOR of the taught ones right;
- + negatives, a fixed margin on the lead: "unknown" where a photo's cosine to the nearest negative
  beats that to the nearest taught category by the margin; threshold and margin chosen together
  the same way;
- + negatives, over the support's own leads: the product's rule (fsl/inference/negatives.py), its
  threshold and margin chosen the same way.

Choices read the selection episodes only; then `novel-hard-7w5s` (5 taught, 2 untaught siblings) and
`novel-15w5s` taught its first 5 classes (10 random untaught classes) are read to report. The
trade-off curve on the hard novel episodes (untaught answered unknown where the threshold answers
75/80/85/90% of taught photos right) describes each rule; it chooses nothing.

The calibration of split 0 is the shipped one (fitted on split 0's selection classes); another split's
is fitted here on its own selection classes (harness.calibration.calibrate, as `fsl calibrate` does),
so every split's figures are held out. Offline encoder, real data.

    python benchmarks/hard_open_set.py [--data DIR] [--splits 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch

from fsl.config import EncoderConfig, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.data.prepared import load_catalog
from fsl.episodes.siblings import HARD_TAUGHT
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import load_episode_set
from fsl.harness.calibration import calibrate
from fsl.harness.evaluate import mean_ci
from fsl.harness.experiment import config_for_split
from fsl.harness.negatives import class_means, labels_by_row
from fsl.harness.select import power_line
from fsl.inference.calibration import Calibration, config_key, find_calibration
from fsl.inference.classifier import SupportSetClassifier
from fsl.inference.heads import DEFAULT_HEAD, NAMED_HEADS, head_for_features
from fsl.inference.negatives import MARGIN, KnownNegatives, turned_away
from fsl.methods import FewShotHead
from fsl.paths import Workspace
from fsl.store.features import FeatureStore
from fsl.store.open import open_store
from fsl.store.rows import store_rows

TAUGHT_FLOOR = 0.85  # issue 36's floor: taught photos right and answered
MARGINS = np.round(np.arange(0, 0.2001, 0.005), 3)  # over the support's own leads (negatives.turned_away)
LEAD_MARGINS = np.round(np.arange(-0.05, 0.2001, 0.005), 3)  # a fixed margin on the lead itself
QUANTILES = np.linspace(0, 0.4, 81)  # thresholds tried: these quantiles of the taught photos' scores
CURVE = (0.75, 0.8, 0.85, 0.9)
OFF = float("inf")


@dataclass
class Queries:
    """Every query of a set's episodes, flat: whether its class was taught, whether the head's best
    guess is right, its known-ness score, its negatives' lead, and its episode."""

    taught: np.ndarray
    correct: np.ndarray
    score: np.ndarray
    lead: np.ndarray
    excess: np.ndarray
    episode: np.ndarray

    def turned_away(self, margin: float, rule: str = "support") -> np.ndarray:
        """[queries] answered "unknown" by the negatives: `rule` "support" is the product's
        (negatives.turned_away), "lead" a fixed margin on the lead itself; none at OFF."""
        if margin == OFF:
            return np.zeros(len(self.lead), dtype=bool)
        if rule == "lead":
            return self.lead > margin
        return turned_away(torch.from_numpy(self.excess), torch.from_numpy(self.lead), margin).numpy()

    def rates(self, threshold: float, away: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per episode: taught photos right and answered, untaught photos answered unknown, with the
        threshold and the negatives' `away` mask."""
        answered = (self.score >= threshold) & ~away
        count = self.episode.max() + 1
        right = np.bincount(self.episode, answered & self.correct & self.taught, count)
        unknown = np.bincount(self.episode, ~answered & ~self.taught, count)
        return right / np.bincount(self.episode, self.taught, count), unknown / np.bincount(
            self.episode, ~self.taught, count
        )

    def rule_rates(self, threshold: float, margin: float, rule: str) -> tuple[np.ndarray, np.ndarray]:
        return self.rates(threshold, self.turned_away(margin, rule))

    def best_under_floor(self, margins, rule: str = "support") -> tuple[tuple[float, float, str], str]:
        """(threshold, margin, rule) turning the most untaught photos away with TAUGHT_FLOOR of taught
        ones right, and the power line of the margin: the chosen one against the runner-up margin (each
        at its best threshold), paired over these episodes' untaught photos answered unknown."""
        thresholds = np.quantile(self.score[self.taught], QUANTILES)
        options = {}  # margin -> (untaught answered unknown per episode, threshold)
        for margin in margins:
            away = self.turned_away(margin, rule)
            for threshold in thresholds:
                right, unknown = self.rates(threshold, away)
                if right.mean() >= TAUGHT_FLOOR and unknown.mean() > options.get(margin, (np.zeros(1),))[0].mean():
                    options[margin] = (unknown, float(threshold))
        if not options:
            return (float(thresholds[0]), OFF, rule), "no margin reaches the floor"
        names = list(options)
        best = max(range(len(names)), key=lambda i: options[names[i]][0].mean())
        power = power_line([f"margin {m:g}" for m in names], [options[m][0] for m in names], best)["verdict"]
        return (options[names[best]][1], float(names[best]), rule), power


def queries_of(head, calibration, features, rows, episode_set, negatives: KnownNegatives, exclude_untaught: bool):
    """Queries of `episode_set` with its first HARD_TAUGHT classes taught, through the one core."""
    episodes, names = episode_set.episodes, episode_set.meta["classes"]
    k, q = episodes.k_shot, episodes.q_query
    parts = []
    for e in range(len(episodes)):
        classes = [names[c] for c in episodes.classes[e]]
        taught, untaught = classes[:HARD_TAUGHT], classes[HARD_TAUGHT:]
        support = torch.from_numpy(features[rows(episodes.support[e, : HARD_TAUGHT * k])])
        labels = torch.arange(HARD_TAUGHT).repeat_interleave(k)
        episode_negatives = replace(negatives.without(untaught) if exclude_untaught else negatives, margin=OFF)
        core = SupportSetClassifier(head, taught, support, labels, calibration, negatives=episode_negatives)
        queries = torch.from_numpy(features[rows(episodes.query[e])])
        answers = core.answer(queries)  # the threshold alone: the negatives' margin is OFF
        excess, lead, _ = core.negative_rule.judge(core.head.embed(queries))
        truth = np.repeat(classes, q)
        parts.append((
            np.arange(len(truth)) < HARD_TAUGHT * q,
            np.array([a.best for a in answers]) == truth,
            np.array([a.known_score for a in answers]),
            lead.numpy(),
            excess.numpy(),
            np.full(len(truth), e),
        ))  # fmt: skip
    return Queries(*(np.concatenate(column) for column in zip(*parts)))


def cell(values: np.ndarray) -> str:
    mean, ci = mean_ci(values)
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def curve(queries: Queries, margin: float, rule: str) -> str:
    """Untaught answered unknown where the threshold answers each CURVE share of taught photos right."""
    thresholds = np.quantile(queries.score[queries.taught], QUANTILES)
    away = queries.turned_away(margin, rule)
    rates = [queries.rates(threshold, away) for threshold in thresholds]
    points = []
    for target in CURVE:
        reached = [away.mean() for right, away in rates if right.mean() >= target]
        points.append(f"{100 * max(reached):.1f}" if reached else "–")
    return " | ".join(points)


@dataclass
class DefaultHead:
    """The own-categories default over a catalog's store, as the close-neighbour benchmarks read it:
    its image features, each row's articleType and the head built for them."""

    catalog: Catalog
    config: ExperimentConfig
    workspace: Workspace
    store: FeatureStore
    image: np.ndarray
    labels: np.ndarray
    head: FewShotHead

    @classmethod
    def from_arguments(cls, doc: str) -> tuple[DefaultHead, argparse.Namespace]:
        """The default head over --data's store, and the arguments (--splits) of a benchmark described by `doc`."""
        parser = argparse.ArgumentParser(description=doc.splitlines()[0])
        parser.add_argument("--data")
        parser.add_argument("--splits", type=int, nargs="+", default=[0])
        args = parser.parse_args()
        return cls.open(args.data), args

    @classmethod
    def open(cls, data: str | None, encoder: EncoderConfig | None = None, split_seed: int = 0) -> DefaultHead:
        """The default head on the offline encoder, or on `encoder` (an adapted one: split `split_seed`'s
        adaptation, named as a config names split 0's)."""
        catalog, config, workspace = load_catalog(data), NAMED_HEADS[DEFAULT_HEAD], Workspace()
        if encoder is not None:
            config = replace(config, name=f"{config.name}-{encoder.name}", encoder=encoder)
        store = open_store(catalog, config_for_split(config, split_seed).encoder, workspace.features)
        image = np.asarray(store.image, dtype=np.float32)
        labels = labels_by_row(catalog, store, "articleType")
        return cls(catalog, config, workspace, store, image, labels,
                   head_for_features(config, image.shape[1], 0, store.encoder_id))  # fmt: skip

    def calibration(self, split_seed: int) -> Calibration:
        """Split 0's shipped calibration (the offline encoder's); another's fitted on its own selection
        classes, as `fsl calibrate` fits it."""
        if split_seed == 0 and self.config.encoder.name == "offline":
            return find_calibration(config_key(self.config, self.store.encoder_id))
        with tempfile.TemporaryDirectory() as folder:
            return calibrate(self.config, self.catalog, self.workspace, folder, split_seed, report=False)


def main() -> None:
    setup, args = DefaultHead.from_arguments(__doc__)
    catalog, config, workspace, store = setup.catalog, setup.config, setup.workspace, setup.store
    image, labels, head = setup.image, setup.labels, setup.head

    def rows(ids: np.ndarray) -> np.ndarray:
        return store_rows(store.ids, ids)

    print(f"{DEFAULT_HEAD}, offline encoder; rules chosen on select-hard-7w5s (taught right and answered >= "
          f"{100 * TAUGHT_FLOOR:.0f}%), reported on the novel sets\n")  # fmt: skip
    print("| split | set | rule | taught: right and answered | untaught: answered unknown |")
    print("|---|---|---|---|---|")
    today = "today (threshold alone)"
    beside = "today's threshold + negatives"
    shipped = "as shipped: + negatives, threshold fitted with them"
    curves, split_means = [], {}
    for split_seed in args.splits:
        calibration = setup.calibration(split_seed)
        split = ClassSplit.load(catalog, "articleType", split_seed, workspace.episodes_of(split_seed))
        pool = split.classes("select")

        def load(name: str):
            return load_episode_set(config, catalog, name, workspace.episodes_of(split_seed))

        selection = queries_of(head, calibration, image, rows, load("select-hard-7w5s"),
                               KnownNegatives(tuple(pool), class_means(image, labels, pool)), True)  # fmt: skip
        chosen = {
            "threshold re-chosen": selection.best_under_floor([OFF]),
            "+ negatives, a fixed margin on the lead": selection.best_under_floor(LEAD_MARGINS, "lead"),
            "+ negatives, over the support's own leads": selection.best_under_floor(MARGINS),
        }
        rules = {
            today: (calibration.threshold_at(HARD_TAUGHT), OFF, "support"),
            beside: (calibration.threshold_at(HARD_TAUGHT), MARGIN, "support"),
            shipped: (calibration.answering_with_negatives().threshold_at(HARD_TAUGHT), MARGIN, "support"),
        }
        for rule, (setting, power) in chosen.items():
            rules[rule] = setting
            if setting[1] != OFF:
                print(f"| {split_seed} | select-hard (choosing) | {rule}: the margin's power line | {power} | |")
        negatives = KnownNegatives(tuple(pool), class_means(image, labels, pool))
        for kind, name in (("hard (siblings)", "novel-hard-7w5s"), ("random", "novel-15w5s")):
            reported = queries_of(head, calibration, image, rows, load(name), negatives, False)
            base_right, base_away = reported.rule_rates(*rules[today])
            for rule, setting in rules.items():
                right, away = reported.rule_rates(*setting)
                label = rule if setting[1] == OFF else f"{rule} (margin {setting[1]:g})"
                paired = "" if rule == today else f" (paired {cell(right - base_right)} / {cell(away - base_away)})"
                print(f"| {split_seed} | {kind} | {label}{paired} | {cell(right)} | {cell(away)} |", flush=True)
                split_means.setdefault((kind, rule), []).append(
                    [right.mean(), away.mean(), (right - base_right).mean(), (away - base_away).mean()]
                )
            if kind.startswith("hard"):
                curves.append((split_seed, reported, rules))
    if len(args.splits) > 1:
        print(f"\nOver the {len(args.splits)} splits: the mean of the split means ± a 95% t interval over them "
              "(paired: the rule minus today's on the same episodes, per split)")  # fmt: skip
        print("| set | rule | taught: right and answered | untaught: answered unknown | paired: taught / untaught |")
        print("|---|---|---|---|---|")
        for (kind, rule), values in split_means.items():
            columns = [cell(np.array(column)) for column in zip(*values)]
            print(f"| {kind} | {rule} | {columns[0]} | {columns[1]} | {columns[2]} / {columns[3]} |")
    print("\nThe trade-off on the hard novel episodes: untaught answered unknown (%) where the threshold answers "
          "this share of taught photos right (chosen on novel: a description, never a choice)")  # fmt: skip
    print("| split | rule | " + " | ".join(f"{100 * t:.0f}% taught" for t in CURVE) + " |")
    print("|---|---|" + "---|" * len(CURVE))
    for split_seed, reported, rules in curves:
        for rule, (_, margin, kind) in rules.items():
            if rule not in ("threshold re-chosen", beside, shipped):  # curves of today's and the own leads' rules
                label = "threshold alone" if margin == OFF else f"{rule} (margin {margin:g})"
                print(f"| {split_seed} | {label} | {curve(reported, margin, kind)} |")


if __name__ == "__main__":
    main()
