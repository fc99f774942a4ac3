"""Episodes per second: our batched sampler + prototype head vs easyfsl (and learn2learn's sampler).

Same cached features (the offline encoder's image features of the real data), novel classes,
5-way 5-shot 15-query, in one process. Also checks that easyfsl's PrototypicalNetworks and our
head give the same accuracy on the very same frozen episodes.

    python benchmarks/sampler_speed.py [--data DIR] [--episodes 1000]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from fsl.config import EncoderConfig
from fsl.data.prepared import load_catalog
from fsl.episodes.frozen import EpisodeSet
from fsl.episodes.sampler import EpisodeSampler
from fsl.harness.evaluate import run_episodes
from fsl.methods import create_head
from fsl.methods.fusion import create_fusion
from fsl.methods.protonet import ProtoNet
from fsl.paths import episodes_dir_for
from fsl.store.open import open_store
from fsl.store.rows import store_rows


def ours(
    features: torch.Tensor, ids, labels, classes, n_episodes: int, batch: int = 256, gram: bool = False
) -> tuple[float, float]:
    """Sample, gather, classify, score. The Gram matrix, made once per class split, is timed apart."""
    head = create_head("protonet", create_fusion("image", features.shape[1], 0))
    rows = np.arange(len(ids))  # sample store rows directly: ids -> rows is a one-off map per split
    sampler = EpisodeSampler(rows, labels, classes, 5, 5, 15, seed=1)
    support_labels = torch.arange(5).repeat_interleave(5)
    query_labels = torch.arange(5).repeat_interleave(15)
    correct = []
    with torch.inference_mode():
        gram_matrix = features @ features.T if gram else None
        start = time.perf_counter()
        for _ in range(n_episodes // batch):
            episodes = sampler.sample(batch)
            support_rows, query_rows = torch.from_numpy(episodes.support), torch.from_numpy(episodes.query)
            if gram:
                logits = ProtoNet.logits_from_gram(gram_matrix, support_rows, query_rows, 5)
            else:
                logits = head(features[support_rows], support_labels.expand(batch, -1), features[query_rows], 5)
            correct.append((logits.argmax(-1) == query_labels).double().mean(-1))
    seconds = time.perf_counter() - start
    return (n_episodes // batch) * batch / seconds, torch.cat(correct).mean().item()


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: list[int]):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def get_labels(self):
        return self.labels


def easyfsl_run(features: torch.Tensor, label_ids: list[int], n_episodes: int) -> tuple[float, float]:
    from easyfsl.methods import PrototypicalNetworks
    from easyfsl.samplers import TaskSampler

    dataset = FeatureDataset(features, label_ids)
    sampler = TaskSampler(dataset, n_way=5, n_shot=5, n_query=15, n_tasks=n_episodes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)
    model = PrototypicalNetworks().eval()
    random.seed(1)
    correct = []
    start = time.perf_counter()
    with torch.inference_mode():
        for support, support_labels, query, query_labels, _ in loader:
            model.process_support_set(support, support_labels)
            correct.append((model(query).argmax(-1) == query_labels).double().mean().item())
    return n_episodes / (time.perf_counter() - start), float(np.mean(correct))


def easyfsl_on_frozen(
    features: np.ndarray, ids, episode_set: EpisodeSet, method: str = "PrototypicalNetworks", **options
) -> np.ndarray:
    """Per-episode accuracy of an easyfsl method (by class name, with its options) on our frozen episodes."""
    import contextlib

    import easyfsl.methods

    model = getattr(easyfsl.methods, method)(**options).eval()
    eps = episode_set.episodes
    support_labels, query_labels = torch.as_tensor(eps.support_labels), torch.as_tensor(eps.query_labels)
    accuracy = []
    # TIM fine-tunes its prototypes with autograd: no inference mode for it
    with contextlib.nullcontext() if method == "TIM" else torch.inference_mode():
        for s, q in zip(store_rows(ids, eps.support), store_rows(ids, eps.query)):
            model.process_support_set(torch.from_numpy(features[s]), support_labels)
            accuracy.append((model(torch.from_numpy(features[q])).argmax(-1) == query_labels).double().mean().item())
    return np.array(accuracy)


def easyfsl_pipeline(
    features: np.ndarray,
    ids,
    labels: np.ndarray,
    episode_set: EpisodeSet,
    method: str = "PrototypicalNetworks",
    **options,
) -> np.ndarray:
    """Per-episode accuracy the way an easyfsl user evaluates on fixed tasks: its FeaturesDataset of
    pre-extracted features, a DataLoader whose batch sampler yields each frozen episode (a
    TaskSampler that replays our episodes instead of drawing), TaskSampler's episodic_collate_fn,
    and easyfsl.utils.evaluate_on_one_task per episode (what easyfsl.utils.evaluate sums).
    labels [P]: each store row's class, which the collate function reads."""
    import contextlib

    import easyfsl.methods
    from easyfsl.datasets import FeaturesDataset
    from easyfsl.samplers import TaskSampler
    from easyfsl.utils import evaluate_on_one_task

    episodes = episode_set.episodes
    n_way, n_shot = episodes.n_way, episodes.support.shape[1] // episodes.n_way
    n_query = episodes.query.shape[1] // n_way
    support = store_rows(ids, episodes.support).reshape(len(episodes), n_way, n_shot)
    query = store_rows(ids, episodes.query).reshape(len(episodes), n_way, n_query)  # class-major, as support
    tasks = np.concatenate([support, query], axis=2).reshape(len(episodes), -1)  # per class: shots, then queries

    class FrozenTasks(TaskSampler):
        def __init__(self):  # TaskSampler's own __init__ draws from the dataset; this one replays
            self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query

        def __len__(self):
            return len(tasks)

        def __iter__(self):
            yield from tasks.tolist()

    sampler = FrozenTasks()
    dataset = FeaturesDataset(labels.tolist(), torch.from_numpy(features), [])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)
    model = getattr(easyfsl.methods, method)(**options).eval()
    accuracy = []
    with contextlib.nullcontext() if method == "TIM" else torch.no_grad():  # TIM fine-tunes with autograd
        for support_features, support_labels, query_features, query_labels, _ in loader:
            correct, total = evaluate_on_one_task(model, support_features, support_labels, query_features, query_labels)
            accuracy.append(correct / total)
    return np.array(accuracy)


def learn2learn_run(features: torch.Tensor, label_ids: list[int], n_episodes: int) -> float | None:
    try:
        import learn2learn as l2l
    except ImportError:
        return None
    dataset = l2l.data.MetaDataset(FeatureDataset(features, label_ids))
    transforms = [
        l2l.data.transforms.NWays(dataset, 5),
        l2l.data.transforms.KShots(dataset, 20),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
    ]
    tasks = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)
    start = time.perf_counter()
    for _ in range(n_episodes):
        tasks.sample()
    return n_episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--episodes", type=int, default=8192)
    parser.add_argument("--threads", type=int, help="torch threads for every pipeline (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    catalog = load_catalog(args.data)
    store = open_store(catalog, EncoderConfig("offline"))
    episode_set = EpisodeSet.load(episodes_dir_for(catalog) / "articleType-novel-5w5s.npz", catalog.fingerprint)
    classes = episode_set.meta["classes"]
    labels = catalog.labels("articleType").to_numpy()
    in_novel = np.isin(labels, classes)
    ids = store.ids[in_novel]
    features = torch.from_numpy(np.ascontiguousarray(store.image[in_novel]))
    label_ids = [classes.index(c) for c in labels[in_novel]]
    print(
        f"{len(ids)} products of {len(classes)} novel classes, {features.shape[1]}-d offline image features; "
        f"5-way 5-shot 15-query, {args.episodes} episodes, torch threads = {torch.get_num_threads()}"
    )

    import torch.utils.data as tud

    original_init = tud.Sampler.__init__
    tud.Sampler.__init__ = lambda self, data_source=None: original_init(self)  # easyfsl 1.5 vs torch >= 2.2
    print("note: patched torch Sampler.__init__ to accept easyfsl 1.5's data_source argument")

    started = time.perf_counter()
    features @ features.T
    gram_seconds = time.perf_counter() - started
    our_speed, our_acc = ours(features, ids, labels[in_novel], classes, args.episodes, gram=True)
    plain_speed, plain_acc = ours(features, ids, labels[in_novel], classes, args.episodes // 4, batch=32)
    easy_speed, easy_acc = easyfsl_run(features, label_ids, args.episodes // 4)
    l2l_speed = learn2learn_run(features, label_ids, args.episodes // 4)

    full = np.asarray(store.image)
    frozen_ours = run_episodes(
        create_head("protonet", create_fusion("image", full.shape[1], 0)), full, store.ids, episode_set, progress=False
    )
    frozen_easy = easyfsl_on_frozen(full, store.ids, episode_set)

    print(f"\n{'pipeline':52s} {'episodes/s':>11s} {'ratio':>7s} {'accuracy':>9s}")
    print(f"{'fsl EpisodeSampler + ProtoNet, Gram form (batch 256)':52s} {our_speed:11.0f} {1.0:7.3f} {our_acc:9.4f}")
    print(
        f"{'fsl EpisodeSampler + ProtoNet, contract (batch 32)':52s} {plain_speed:11.0f} "
        f"{plain_speed / our_speed:7.3f} "
        f"{plain_acc:9.4f}"
    )
    print(
        f"{'easyfsl TaskSampler + PrototypicalNetworks':52s} {easy_speed:11.0f} {easy_speed / our_speed:7.3f} "
        f"{easy_acc:9.4f}"
    )
    if l2l_speed is None:
        print(f"{'learn2learn TaskDataset.sample()':52s} {'not installed (make setup builds it)':>11s}")
    else:
        print(
            f"{'learn2learn TaskDataset.sample() (sampling only)':52s} {l2l_speed:11.0f} {l2l_speed / our_speed:7.3f}"
        )
    print(
        f"\nthe Gram matrix of the {len(ids)} novel products takes {gram_seconds:.2f} s once per split "
        f"(= {gram_seconds * our_speed:.0f} episodes' time)"
    )
    print(
        f"ours / easyfsl speed: {our_speed / easy_speed:.1f}x in Gram form (target >= 30x), "
        f"{plain_speed / easy_speed:.1f}x through the head contract (features gathered per episode)"
    )
    print(
        f"same {len(frozen_ours)} frozen episodes: ours {frozen_ours.mean():.4f}, easyfsl {frozen_easy.mean():.4f}, "
        f"largest per-episode difference {np.abs(frozen_ours - frozen_easy).max():.4f}"
    )


if __name__ == "__main__":
    main()
