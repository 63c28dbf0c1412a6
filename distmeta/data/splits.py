"""Train/val/test class splits of Omniglot-like data, shared by the zip and Parquet readers.

Contract: ``build_splits(data_cfg, load_set)`` returns ``{"train"|"val"|"test": dataset}``
given ``load_set(name) -> ImageClassDataset`` for a source set name. Sets named
together are concatenated with repeated class names dropped (small1, small2 and
background share alphabets file for file). Presets (``data.preset``) replace the
SplitSpecs:

* ``maml``: background + evaluation characters (1623) permuted by
  ``np.random.default_rng(data.seed)``; the first 1100 train, next 100 val, next 423
  test. Fewer characters is an error.
* ``official``: test = evaluation; val = the last ``OFFICIAL_VAL_ALPHABETS`` (5)
  background alphabets in sorted name order (on the full set: Ojibwe, Sanskrit,
  Syriac_(Estrangelo), Tagalog, Tifinagh); train = the other background alphabets.
* ``minimal``: train = background_small1; val = test = background_small2 restricted to
  Japanese_(katakana), Sanskrit, Tagalog (its alphabets not shared with small1).

Without a preset a split is its SplitSpec: ``sets`` concatenated, then ``alphabets`` /
``exclude_alphabets``; a spec with no sets is left out. Class order in a split is
source order (sets in the given order, then sorted names), so it is deterministic.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from distmeta.schema import DataConfig, SplitSpec
from distmeta.errors import DataError
from distmeta.data.base import ImageClassDataset

SPLITS = ("train", "val", "test")
MAML_SIZES = (1100, 100, 423)
OFFICIAL_VAL_ALPHABETS = 5
# The minimal condition trains on background_small1; small2's alphabets that small1 lacks are
# held out: Tagalog (17 characters) validates (best.pt, Tune), Japanese (katakana) and Sanskrit
# (89 characters, the alphabets of the generated one-shot runs) are the test set. Validation and
# test characters are disjoint, so selection never sees a test character.
MINIMAL_VAL_ALPHABETS = ("Tagalog",)
MINIMAL_TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit")
MINIMAL_EVAL_ALPHABETS = MINIMAL_TEST_ALPHABETS + MINIMAL_VAL_ALPHABETS
PRESET_SETS = {
    "maml": ["background", "evaluation"],
    "official": ["background", "evaluation"],
    "minimal": ["background_small1", "background_small2"],
}
LoadSet = Callable[[str], ImageClassDataset]


def split_classes(num_classes: int, sizes: Sequence[int], seed: int) -> List[np.ndarray]:
    """Disjoint sorted class-id arrays of the given sizes from a seeded permutation."""
    if sum(sizes) > num_classes:
        raise DataError(f"a {'/'.join(map(str, sizes))} class split needs {sum(sizes)} classes, "
                        f"only {num_classes} available")
    order = np.random.default_rng(seed).permutation(num_classes)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def union_sets(load_set: LoadSet, sets: Sequence[str]) -> ImageClassDataset:
    """The named sets concatenated in order, each class name kept once (first occurrence)."""
    parts, seen = [], set()
    for name in sets:
        ds = load_set(name)
        keep = [c for c, cname in enumerate(ds.classes) if cname not in seen]
        seen.update(ds.classes)
        parts.append(ds if len(keep) == ds.num_classes else ds.subset(keep))
    return parts[0] if len(parts) == 1 else ImageClassDataset.concat(parts)


def select_alphabets(ds: ImageClassDataset, include: Optional[Sequence[str]],
                     exclude: Optional[Sequence[str]], where: str) -> ImageClassDataset:
    try:
        return ds.select_groups(include, exclude)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None


def sets_used(data_cfg: DataConfig) -> List[str]:
    """Source sets a config reads, in first-use order."""
    if data_cfg.preset:
        return list(PRESET_SETS.get(data_cfg.preset, []))
    names: List[str] = []
    for split in SPLITS:
        names += [s for s in getattr(data_cfg, split).sets if s not in names]
    return names


def _preset_specs(preset: str, load_set: LoadSet) -> Dict[str, SplitSpec]:
    if preset == "minimal":
        return {"train": SplitSpec(sets=["background_small1"]),
                "val": SplitSpec(sets=["background_small2"], alphabets=list(MINIMAL_VAL_ALPHABETS)),
                "test": SplitSpec(sets=["background_small2"], alphabets=list(MINIMAL_TEST_ALPHABETS))}
    if preset == "official":
        alphabets = sorted(set(load_set("background").groups))
        if len(alphabets) <= OFFICIAL_VAL_ALPHABETS:
            raise DataError(f"preset 'official': background has {len(alphabets)} alphabets, "
                            f"needs more than {OFFICIAL_VAL_ALPHABETS}")
        held = alphabets[-OFFICIAL_VAL_ALPHABETS:]
        return {"train": SplitSpec(sets=["background"], exclude_alphabets=held),
                "val": SplitSpec(sets=["background"], alphabets=held),
                "test": SplitSpec(sets=["evaluation"])}
    raise DataError(f"data.preset: unknown preset {preset!r}; available: maml, official, minimal")


def build_splits(data_cfg: DataConfig, load_set: LoadSet, *,
                 maml_sizes: Sequence[int] = MAML_SIZES) -> Dict[str, ImageClassDataset]:
    if data_cfg.preset == "maml":
        pool = union_sets(load_set, PRESET_SETS["maml"])
        if pool.num_classes < sum(maml_sizes):
            raise DataError(f"preset 'maml' needs {sum(maml_sizes)} characters (background + "
                            f"evaluation), found {pool.num_classes}")
        parts = split_classes(pool.num_classes, maml_sizes, data_cfg.seed)
        return {name: pool.subset(ids) for name, ids in zip(SPLITS, parts) if len(ids)}

    specs = (_preset_specs(data_cfg.preset, load_set) if data_cfg.preset
             else {name: getattr(data_cfg, name) for name in SPLITS})
    out: Dict[str, ImageClassDataset] = {}
    for name, spec in specs.items():
        where = f"data.{name}"
        if not spec.sets:
            if spec.alphabets or spec.exclude_alphabets:
                raise DataError(f"{where}: alphabets are given but {where}.sets is empty")
            continue
        ds = select_alphabets(union_sets(load_set, spec.sets), spec.alphabets, spec.exclude_alphabets, where)
        if ds.num_classes == 0:
            raise DataError(f"{where}: selects no classes")
        out[name] = ds
    if not out:
        raise DataError("data: no split selects any classes; set data.preset "
                        "(maml | official | minimal) or data.train.sets")
    if "train" in out:
        train = set(out["train"].classes)
        for name in ("val", "test"):
            shared = train.intersection(out[name].classes) if name in out else set()
            if shared:
                warnings.warn(f"data.{name} shares {len(shared)} classes with data.train "
                              f"(e.g. {sorted(shared)[0]})", stacklevel=2)
    return out
