"""The Lake et al. (2015) one-shot classification benchmark: 20 runs of 20-way
within-alphabet one-shot classification, in the official folder layout.

Contract: a run folder ``runNN`` holds ``training/classNN.png`` (one image per class),
``test/itemNN.png`` and ``class_labels.txt`` with lines ``runNN/test/itemNN.png
runNN/training/classMM.png`` (test item -> its class's training image; only the last
two path parts are used). ``read_runs(dir)`` returns the runs sorted by name, images
preprocessed like the zip reader (resize + invert, 255 = ink), the support in sorted
file order, the queries in ``class_labels.txt`` order. ``evaluate_runs`` scores a
``predict_fn(support_x, query_x)`` returning scores ``[n_query, n_support]`` (higher =
more likely; negate distances) or predicted support indices. ``generate_runs`` writes
runs in that layout from held-out alphabets, copying the original PNGs when given a zip.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

import numpy as np
from PIL import Image

from distmeta.errors import DataError
from distmeta.data.base import ImageClassDataset
from distmeta.data.omniglot import list_entries, open_zip, preprocess


@dataclass
class Run:
    name: str
    support_x: np.ndarray   # uint8 [n_way, H, W]
    query_x: np.ndarray     # uint8 [n_query, H, W]
    query_y: np.ndarray     # int64 [n_query], indices into support_x
    support_files: List[str]
    query_files: List[str]


def _read_image(path: Path, image_size: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError:
        raise DataError(f"{path.name} not found in {path.parent}") from None
    return preprocess(data, image_size, str(path))


def read_run(run_dir: Union[str, Path], image_size: int = 28) -> Run:
    run_dir = Path(run_dir)
    labels_file = run_dir / "class_labels.txt"
    if not labels_file.is_file():
        raise DataError(f"class_labels.txt not found in {run_dir}")
    pairs = []
    for n, line in enumerate(labels_file.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{labels_file}:{n}: expected '<test image> <training image>', got {line!r}")
            pairs.append(tuple(Path(*Path(p).parts[-2:]).as_posix() for p in parts))
    support_files = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "training").glob("*.png"))
    index = {f: i for i, f in enumerate(support_files)}
    unknown = [train for _, train in pairs if train not in index]
    if unknown:
        raise DataError(f"{labels_file}: names {unknown[0]}, which is not in {run_dir / 'training'}")
    return Run(
        name=run_dir.name,
        support_x=np.stack([_read_image(run_dir / f, image_size) for f in support_files]),
        query_x=np.stack([_read_image(run_dir / q, image_size) for q, _ in pairs]),
        query_y=np.array([index[t] for _, t in pairs], dtype=np.int64),
        support_files=support_files,
        query_files=[q for q, _ in pairs],
    )


def read_runs(directory: Union[str, Path], image_size: int = 28) -> List[Run]:
    """Every ``run*`` folder under ``directory`` (sorted by name)."""
    directory = Path(directory)
    run_dirs = sorted(p for p in directory.glob("run*") if p.is_dir())
    if not run_dirs:
        raise DataError(f"no run01..run20 folders in {directory}")
    return [read_run(d, image_size) for d in run_dirs]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def evaluate_runs(runs: Sequence[Run], predict_fn: Callable[[np.ndarray, np.ndarray], Any]) -> Dict[str, Any]:
    """Accuracy and error over all test items; ``per_run`` lists each run's accuracy."""
    per_run, correct, trials = [], 0, 0
    for run in runs:
        out = _to_numpy(predict_fn(run.support_x, run.query_x))
        n_query = len(run.query_y)
        if out.shape == (n_query, len(run.support_x)):
            pred = out.argmax(axis=1)
        elif out.shape == (n_query,):
            pred = out.astype(np.int64)
        else:
            raise DataError(f"predict_fn returned shape {out.shape} for run {run.name}; expected scores "
                            f"[{n_query}, {len(run.support_x)}] or indices [{n_query}]")
        hits = int((pred == run.query_y).sum())
        per_run.append({"run": run.name, "accuracy": hits / n_query, "correct": hits, "trials": n_query})
        correct += hits
        trials += n_query
    accuracy = correct / trials if trials else 0.0
    return {"accuracy": accuracy, "error": 1.0 - accuracy, "per_run": per_run, "trials": trials}


def _png(image: np.ndarray) -> bytes:
    """Encode a preprocessed (255 = ink) image back to the source polarity."""
    buf = io.BytesIO()
    Image.fromarray(255 - image).save(buf, format="PNG")
    return buf.getvalue()


def generate_runs(source: Union[ImageClassDataset, str, Path], out_dir: Union[str, Path],
                  alphabets: Sequence[str], n_runs: int = 20, seed: int = 0, n_way: int = 20) -> List[Path]:
    """Write ``run01..`` under ``out_dir`` from ``alphabets`` of ``source`` (a zip path:
    original PNGs are copied; or a dataset: images are re-encoded). Alphabets with at
    least ``n_way`` characters take turns over the runs (in a seeded order); each run
    draws ``n_way`` characters of its alphabet and two drawers (shared by the run's
    characters when possible): one for the training image, one for the test image."""
    if isinstance(source, ImageClassDataset):
        chars: Dict[str, Dict[str, Dict[str, Any]]] = {}
        for c, name in enumerate(source.classes):
            drawers = chars.setdefault(source.groups[c], {}).setdefault(name.split("/", 1)[-1], {})
            for k, i in enumerate(source.indices_of(c)):
                drawers[f"{k + 1:02d}"] = int(i)
        return _generate(chars, lambda i: _png(source.images[i]), out_dir, alphabets, n_runs, seed, n_way)
    with open_zip(source) as zf:
        chars = {}
        for e in list_entries(zf):
            chars.setdefault(e.alphabet, {}).setdefault(e.character, {})[e.drawer] = e.member
        return _generate(chars, zf.read, out_dir, alphabets, n_runs, seed, n_way)


def _generate(chars: Dict[str, Dict[str, Dict[str, Any]]], read: Callable[[Any], bytes], out_dir: Union[str, Path],
              alphabets: Sequence[str], n_runs: int, seed: int, n_way: int) -> List[Path]:
    unknown = [a for a in alphabets if a not in chars]
    if unknown:
        raise DataError(f"unknown alphabet {unknown[0]!r}; available: {', '.join(sorted(chars))}")
    eligible = [a for a in alphabets if len(chars[a]) >= n_way]
    if not eligible:
        raise DataError(f"no alphabet among {', '.join(alphabets)} has {n_way} characters for a {n_way}-way run")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(eligible))
    written = []
    for r in range(n_runs):
        alphabet = chars[eligible[order[r % len(eligible)]]]
        names = sorted(alphabet)
        picked = [names[i] for i in rng.choice(len(names), n_way, replace=False)]
        thin = [c for c in picked if len(alphabet[c]) < 2]
        if thin:
            raise DataError(f"{eligible[order[r % len(eligible)]]}/{thin[0]}: needs images by two drawers")
        common = sorted(set.intersection(*(set(alphabet[c]) for c in picked)))
        shared = list(rng.choice(common, 2, replace=False)) if len(common) >= 2 else None
        run_name = f"run{r + 1:02d}"
        run_dir = Path(out_dir) / run_name
        (run_dir / "training").mkdir(parents=True, exist_ok=True)
        (run_dir / "test").mkdir(parents=True, exist_ok=True)
        test_keys = []
        for k, char in enumerate(picked):
            train_d, test_d = shared or rng.choice(sorted(alphabet[char]), 2, replace=False)
            (run_dir / "training" / f"class{k + 1:02d}.png").write_bytes(read(alphabet[char][train_d]))
            test_keys.append(alphabet[char][test_d])
        lines = []
        for item, k in enumerate(rng.permutation(n_way)):
            (run_dir / "test" / f"item{item + 1:02d}.png").write_bytes(read(test_keys[k]))
            lines.append(f"{run_name}/test/item{item + 1:02d}.png {run_name}/training/class{k + 1:02d}.png")
        (run_dir / "class_labels.txt").write_text("\n".join(lines) + "\n")
        written.append(run_dir)
    return written
