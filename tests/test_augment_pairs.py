"""The pieces the one-shot accuracy work added: seeded affine jitter of training
episodes, and the Siamese network's all-pairs sampling and its losses' target signs."""
import numpy as np
import pytest
import torch
from torch import nn

from distmeta.algorithms.base import forward
from distmeta.algorithms.siamese import Siamese, SiameseConfig, all_pairs
from distmeta.data.base import ImageClassDataset
from distmeta.models.backbones import MLP
from distmeta.models.network import Network
from distmeta.schema import AugmentConfig, ConfigError, TaskConfig
from distmeta.tasks.augment import affine_jitter
from distmeta.tasks.episodes import EpisodeSampler, classification


def glyphs(n_classes=12, per_class=6, size=16):
    rng = np.random.default_rng(0)
    images = np.zeros((n_classes * per_class, size, size), np.uint8)
    for c in range(n_classes):
        r = np.random.default_rng(c)
        for k in range(per_class):  # a class = a random stroke pattern; its images = small shifts of it
            img = np.zeros((size, size), np.uint8)
            for i, j in zip(r.integers(3, size - 5, 4), r.integers(3, size - 5, 4)):
                img[i:i + 3, j:j + 3] = 255  # thick strokes, as in real glyphs
            images[c * per_class + k] = np.roll(img, rng.integers(-1, 2, 2), (0, 1))
    labels = np.repeat(np.arange(n_classes), per_class)
    return ImageClassDataset(images, labels, [f"A{c // 6}/c{c}" for c in range(n_classes)])


def test_identity_jitter_leaves_images_unchanged_and_jitter_moves_ink():
    x = np.zeros((4, 1, 16, 16), np.float32)
    x[:, :, 5:11, 7:9] = 1
    identity = AugmentConfig(rotate=0, shear=0, scale=[1, 1], translate=0)
    assert np.allclose(affine_jitter(x, np.random.default_rng(0), identity), x, atol=1e-5)
    y = affine_jitter(x, np.random.default_rng(0), AugmentConfig(rotate=30, translate=3))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    moved = np.abs(y - x).reshape(4, -1).sum(1)
    assert (moved > 1).all() and len(set(np.round(moved, 3))) == 4  # each image its own draw


def test_augmentation_is_seeded_per_task_and_keeps_the_episode():
    data = glyphs()
    plain = EpisodeSampler(data, 5, 1, 3, rotations=True)
    jitter = EpisodeSampler(data, 5, 1, 3, rotations=True, augment=AugmentConfig())
    a, b, c = jitter.sample(7), jitter.sample(7), jitter.sample(8)
    for key in ("support_x", "query_x", "support_y", "query_y"):
        assert np.array_equal(a[key], b[key])           # same seed, same task
    assert not np.array_equal(a["support_x"], c["support_x"])
    p = plain.sample(7)                                  # same classes and labels as without jitter
    assert np.array_equal(p["support_y"], a["support_y"]) and np.array_equal(p["query_y"], a["query_y"])
    assert not np.allclose(p["query_x"], a["query_x"])
    # a pure shift of at most 2 pixels moves each image's ink centroid by at most 2 pixels
    shift = EpisodeSampler(data, 5, 1, 3, rotations=True,
                           augment=AugmentConfig(rotate=0, shear=0, scale=[1, 1], translate=2)).sample(7)
    grid = np.arange(16)

    def centroid(x):
        mass = x[:, 0]
        return np.stack([(mass.sum(2) * grid).sum(1), (mass.sum(1) * grid).sum(1)], 1) / mass.sum((1, 2))[:, None]

    moved = np.abs(centroid(shift["query_x"]) - centroid(p["query_x"]))
    assert moved.max() <= 2.0 + 1e-4 and moved.max() > 0.2


def test_only_training_episodes_are_jittered():
    data = {"train": glyphs(), "test": glyphs()}
    cfg = TaskConfig(kind="classification", ways=5, shots=1, queries=2, augment={})
    assert classification(cfg, data, "train").augment is not None
    assert classification(cfg, data, "test").augment is None
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=[1.2, 0.8])


def test_train_ways_and_train_shots_shape_training_episodes_only():
    data = {"train": glyphs(), "test": glyphs()}
    cfg = TaskConfig(kind="classification", ways=3, train_ways=6, shots=1, train_shots=4, queries=1)
    train = classification(cfg, data, "train").sample_many(0, "train", 0, [0])[0]
    test = classification(cfg, data, "test").sample_many(0, "test", 0, [0])[0]
    assert train["support_x"].shape[0] == 6 * 4 and sorted(set(train["support_y"].tolist())) == list(range(6))
    assert test["support_x"].shape[0] == 3 * 1 and train["query_x"].shape[0] == 6 and test["query_x"].shape[0] == 3
    with pytest.raises(ConfigError, match=r"^task.train_shots \+ task.queries: 7 exceeds the 6 images"):
        classification(cfg.model_copy(update={"train_shots": 6}), data, "train")


def test_all_pairs_weigh_same_and_different_pairs_half_each():
    y = torch.arange(5).repeat_interleave(3)
    a, b, w = all_pairs(y)
    assert len(a) == 15 * 14 // 2 and bool((a < b).all())
    same = y[a] == y[b]
    assert int(same.sum()) == 5 * 3
    assert float(w[same].sum()) == pytest.approx(0.5) and float(w[~same].sum()) == pytest.approx(0.5)
    _, _, w1 = all_pairs(torch.arange(4))              # no same-class pair: the different ones get it all
    assert float(w1.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("loss", ["verification", "contrastive"])
def test_all_pairs_loss_matches_hand_computation_and_its_target_sign(loss):
    torch.manual_seed(0)
    extras = {"verifier": nn.Linear(8, 1)} if loss == "verification" else {}
    model = Network(MLP(6, [8]), None, extras)
    algo = Siamese(SiameseConfig(name="siamese", loss=loss, pair_sampling="all"), "classification")
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4).repeat(2)
    task = {"support_x": x[:4], "support_y": y[:4], "query_x": x[4:], "query_y": y[4:], "seed": torch.tensor(0)}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    a, b, w = all_pairs(y)
    z = forward(model, params, {}, x)
    sim = algo.pair_similarity(params, z[a], z[b])
    same = (y[a] == y[b]).float()
    if loss == "verification":   # target 1 = SAME class
        per_pair = -(same * nn.functional.logsigmoid(sim) + (1 - same) * nn.functional.logsigmoid(-sim))
    else:                        # pulled together when same, pushed beyond the margin when different
        per_pair = same * sim ** 2 + (1 - same) * torch.clamp(1.0 + sim, min=0) ** 2
    _, metrics = algo.task_gradient(model, params, {}, task)
    assert float(metrics["loss"]) == pytest.approx(float((w * per_pair).sum()), rel=1e-5)


def _protonet_episode(seed=3):
    from distmeta.algorithms.protonet import ProtoNet

    data = glyphs()
    task = EpisodeSampler(data, 5, 1, 3).sample(seed)
    torch.manual_seed(0)
    model = Network(nn.Sequential(nn.Flatten(), nn.Linear(256, 16)))
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    sx, qx = (torch.from_numpy(task[k]).float() for k in ("support_x", "query_x"))
    return ProtoNet(None, "classification"), model, params, buffers, sx, torch.from_numpy(task["support_y"]), qx


def test_test_time_augmentation_reduces_to_plain_scores_without_jitter_and_is_seeded():
    from distmeta.tasks.test_time import augmented_scores

    algo, model, params, buffers, sx, sy, qx = _protonet_episode()
    with torch.no_grad():
        plain = torch.log_softmax(algo.predict(model, params, buffers, algo.adapt(model, params, buffers, sx, sy), qx), -1)
    identity = AugmentConfig(rotate=0, shear=0, scale=[1, 1], translate=0)
    same = augmented_scores(algo, model, params, buffers, sx, sy, qx, None, 4, identity, np.random.default_rng(0))
    assert same.shape == (15, 5) and torch.allclose(same, plain, atol=1e-5)
    jitter = AugmentConfig(rotate=20, translate=2)
    a, b, c = (augmented_scores(algo, model, params, buffers, sx, sy, qx, None, 4, jitter, np.random.default_rng(s))
               for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, plain, atol=1e-3)
    # ProtoNets: the mean log-softmax over query views is -||mean_v f(A_v q) - p_c||^2 plus a constant per
    # query, p_c the prototype of the support and its copies (the same draws: support copies first)
    from distmeta.tasks.test_time import jitter as jit

    rng = np.random.default_rng(1)
    support = torch.cat([sx] + [jit(sx, rng, jitter) for _ in range(4)])
    views = [qx] + [jit(qx, rng, jitter) for _ in range(4)]
    with torch.no_grad():
        protos = algo.adapt(model, params, buffers, support, sy.repeat(5))
        mean_query = torch.stack([forward(model, params, buffers, v) for v in views]).mean(0)
        expected = -((mean_query[:, None] - protos[None]) ** 2).sum(-1)
    offset = a - expected
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-3)
