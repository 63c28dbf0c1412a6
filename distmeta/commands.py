"""``distmeta train``, ``distmeta eval`` and ``distmeta validate``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distmeta.config import apply_overrides, from_dict, load_config_dict, set_field, without_removed_fields


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an experiment (in-process, on an embedded Ray, or on a cluster)",
        description="Run the training loop of an experiment YAML. Results go to a run folder with "
                    "config.yaml, metrics.csv, TensorBoard events, checkpoints and plots.")
    p.add_argument("config", nargs="?", help="experiment YAML (optional with --resume RUN_DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--steps", type=int, help="number of meta-steps (overrides optim.steps)")
    p.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue from the last checkpoint of RUN_DIR; 'auto' resumes --out if it has one")
    p.add_argument("--workers", type=_workers_flag, metavar="N|auto",
                   help="Ray task workers (0 = in-process; auto: in-process for cheap steps; overrides engine.workers)")
    p.add_argument("--address", help="Ray cluster: 'auto', HOST:PORT, or empty for an embedded local Ray")
    p.add_argument("--data-root", help="folder with the dataset files (overrides data.root)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal; else a log line)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="check an experiment YAML without running it",
                       description="Parse and validate a config; print the resolved config or one error line.")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "eval", help="evaluate a trained run on held-out tasks",
        description="Score a run's final checkpoint on its test tasks: mean and 95 % CI (a table, or one "
                    "JSON object with --json whose headline key is accuracy, mse or mean_return).")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--episodes", type=int, help="held-out episodes (default eval.final_episodes)")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--inner-steps", type=int, help="adaptation steps (MAML/Reptile)")
    p.add_argument("--split", choices=["val", "test"], default="test",
                   help="tasks to score: test (default; the data's held-out split) or val")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final",
                   help="final (default) or best: the checkpoint selected on validation")
    p.add_argument("--data-root", help="folder with the dataset files (overrides data.root)")
    p.add_argument("--omniglot-runs", metavar="DIR",
                   help="score the official 20-run one-shot benchmark layout (run01..run20)")
    p.add_argument("--tta", type=int, metavar="N",
                   help="test-time augmentation: N jittered copies of each support and query image "
                        "(default eval.test_time_augment; 0: off)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def _typed_flags(cfg, args) -> None:
    """CLI flags set typed fields directly (validated like the YAML)."""
    flags = {"engine.workers": getattr(args, "workers", None), "engine.address": getattr(args, "address", None),
             "data.root": getattr(args, "data_root", None)}
    for dotted, value in flags.items():
        if value is not None:
            set_field(cfg, dotted, value)


def cmd_train(args) -> int:
    from distmeta.engine.run_dir import RunDir
    from distmeta.engine.trainer import train
    from distmeta.errors import DistmetaError

    _positive("steps", args.steps)
    if args.config:
        data = load_config_dict(args.config, args.overrides)
    elif args.resume and args.resume != "auto":
        data = apply_overrides(without_removed_fields(RunDir.read_config(args.resume), args.resume), args.overrides)
    else:
        raise DistmetaError("train: give a CONFIG (or --resume RUN_DIR)")
    cfg = from_dict(data)
    _typed_flags(cfg, args)
    result = train(cfg, out=args.out, steps=args.steps, resume=args.resume, progress=args.progress)
    return 130 if result.status == "interrupted" else 0


def cmd_validate(args) -> int:
    import yaml

    cfg = from_dict(load_config_dict(args.config, args.overrides))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(f"{args.config}: valid", file=sys.stderr)
    return 0


def _workers_flag(text: str):
    """``--workers``: an integer or ``auto`` (the schema checks the range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def _positive(name: str, value) -> None:
    from distmeta.errors import DistmetaError

    if value is not None and value <= 0:
        raise DistmetaError(f"--{name}: must be > 0, got {value}")


def evaluate_run(run: str, episodes=None, ways=None, shots=None, queries=None, inner_steps=None, split="test",
                 data_root=None, omniglot_runs=None, checkpoint="final", tta=None):
    """The figures ``distmeta eval`` prints, as a dict: by default the final checkpoint on the test split."""
    from distmeta.engine.run_dir import load_run_checkpoint
    from distmeta.errors import DistmetaError
    from distmeta.method import method_class

    for name, value in (("episodes", episodes), ("ways", ways), ("shots", shots), ("queries", queries)):
        _positive(name, value)
    if inner_steps is not None and inner_steps < 0:
        raise DistmetaError(f"--inner-steps: must be >= 0, got {inner_steps}")
    if tta is not None and tta < 0:
        raise DistmetaError(f"--tta: must be >= 0, got {tta}")
    if omniglot_runs:
        return evaluate_oneshot_runs(run, omniglot_runs, inner_steps, checkpoint, tta)
    state, which = load_run_checkpoint(run, checkpoint)
    data = without_removed_fields(state["config"], str(run))
    if data_root:
        data = apply_overrides(data, [f"data.root={json.dumps(data_root)}"])
    cfg = from_dict(data)
    if tta and (cfg.rl is not None or cfg.task.kind != "classification"):
        raise DistmetaError("--tta: test-time augmentation needs an image classification run")
    method = method_class(cfg).from_checkpoint(cfg, state["state"])
    task = {k: v for k, v in (("ways", ways), ("shots", shots), ("queries", queries), ("inner_steps", inner_steps),
                              ("test_time_augment", tta if cfg.rl is None else None)) if v is not None}
    out = method.evaluate(split or "test", episodes or cfg.eval.final_episodes, **task)
    setting = method.eval_setting(ways, shots, inner_steps) if hasattr(method, "eval_setting") else {}
    return {**out, **setting, "checkpoint": which, "iteration": int(state["step"])}


def evaluate_oneshot_runs(run: str, runs_dir: str, inner_steps=None, checkpoint="final", tta=None):
    """Accuracy and error over the official 20-run, 400-trial one-shot layout; ``tta`` jittered
    copies (default ``eval.test_time_augment``), run r's jitter drawn from ``default_rng([seed, r])``."""
    import numpy as np
    import torch

    import distmeta
    from distmeta.data.oneshot_runs import evaluate_runs, read_runs
    from distmeta.tasks.test_time import augmented_scores

    model = distmeta.load(run, checkpoint=checkpoint)
    cfg = model.config
    copies = cfg.eval.test_time_augment if tta is None else int(tta)
    runs = read_runs(runs_dir, image_size=cfg.data.image_size)
    rngs = iter([np.random.default_rng([cfg.seed, r]) for r in range(len(runs))])

    def predict(support_x, query_x):
        sx = model.as_input(torch.as_tensor(support_x, dtype=torch.float32)[:, None] / 255.0)
        qx = model.as_input(torch.as_tensor(query_x, dtype=torch.float32)[:, None] / 255.0)
        sy = torch.arange(len(sx), device=model.device)
        return augmented_scores(model.algorithm, model.network, model.params, model.buffers, sx, sy, qx,
                                inner_steps, copies, cfg.task.augment, next(rngs)).cpu().numpy()

    result = evaluate_runs(runs, predict)
    return {"accuracy": result["accuracy"], "error": result["error"], "trials": result["trials"],
            "per_run": result["per_run"], "test_time_augment": copies}


def cmd_eval(args) -> int:
    result = evaluate_run(args.run, args.episodes, args.ways, args.shots, args.queries, args.inner_steps,
                          args.split, args.data_root, args.omniglot_runs, args.checkpoint, args.tta)
    if args.json:
        print(json.dumps(result))
        return 0
    headline = next(k for k in ("accuracy", "mse", "mean_return") if k in result)
    print(f"{'metric':<26}value")
    for key, value in result.items():
        if key == "per_run":
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if key == headline and "ci95" in result:
            text = f"{value:.4f} ± {result['ci95']:.4f}"
        print(f"{key:<26}{text}")
    for i, r in enumerate(result.get("per_run", []), 1):
        print(f"run{i:02d}{'':<21}accuracy {r['accuracy']:.3f}")
    return 0
