"""``distmeta train``, ``distmeta eval`` and ``distmeta validate``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distmeta.config import apply_overrides, from_dict, load_config_dict


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
    p.add_argument("--workers", type=int, help="Ray task workers (0 = in-process; overrides engine.workers)")
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
        description="Adapt to held-out episodes and report mean and 95%% CI (a table, or one JSON object "
                    "with --json whose headline key is accuracy, mse or mean_return).")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--episodes", type=int, help="held-out episodes (default eval.final_episodes)")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--inner-steps", type=int, help="adaptation steps (MAML/Reptile)")
    p.add_argument("--split", choices=["train", "val", "test"], help="held-out split (default test, else val)")
    p.add_argument("--data-root", help="folder with the dataset files (overrides data.root)")
    p.add_argument("--omniglot-runs", metavar="DIR",
                   help="score the official 20-run one-shot benchmark layout (run01..run20)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def _cli_overrides(args) -> list:
    extra = list(args.overrides or [])
    if getattr(args, "workers", None) is not None:
        extra.append(f"engine.workers={args.workers}")
    if getattr(args, "address", None) is not None:
        extra.append(f"engine.address={json.dumps(args.address)}")
    if getattr(args, "data_root", None):
        extra.append(f"data.root={json.dumps(args.data_root)}")
    return extra


def cmd_train(args) -> int:
    from distmeta.engine.run_dir import RunDir
    from distmeta.engine.trainer import train

    if args.config:
        data = load_config_dict(args.config, _cli_overrides(args))
    elif args.resume and args.resume != "auto":
        data = apply_overrides(RunDir.open(args.resume).config_dict(), _cli_overrides(args))
    else:
        from distmeta.errors import DistmetaError

        raise DistmetaError("train: give a CONFIG (or --resume RUN_DIR)")
    cfg = from_dict(data)
    result = train(cfg, out=args.out, steps=args.steps, resume=args.resume, progress=args.progress)
    print(f"run folder: {result.path}")
    return 130 if result.status == "interrupted" else 0


def cmd_validate(args) -> int:
    import yaml

    data = load_config_dict(args.config, args.overrides)
    cfg = from_dict(data)
    if data.get("tune"):
        from distmeta.tune import parse_tune_section

        parse_tune_section(data)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(f"{args.config}: valid", file=sys.stderr)
    return 0


def evaluate_run(run: str, episodes=None, ways=None, shots=None, queries=None, inner_steps=None, split=None,
                 data_root=None, omniglot_runs=None):
    """The figures ``distmeta eval`` prints, as a dict."""
    from distmeta.engine.core import MetaCore
    from distmeta.engine.run_dir import load_checkpoint
    from distmeta.evaluation import evaluate

    state = load_checkpoint(run)
    data = state["config"]
    if data.get("rl"):
        from distmeta.rl import evaluate_rl

        return evaluate_rl(Path(run), episodes=episodes)
    if omniglot_runs:
        return evaluate_oneshot_runs(run, omniglot_runs, inner_steps)
    if data_root:
        data = apply_overrides(data, [f"data.root={json.dumps(data_root)}"])
    cfg = from_dict(data)
    core = MetaCore(cfg)
    core.model.load_state_dict(state["model"])
    split = split or ("test" if ("test" in core.datasets or not core.datasets) else "val")
    flat = core.initial_flat_params()
    out = evaluate(core, flat, split, episodes or cfg.eval.final_episodes, inner_steps=inner_steps,
                   ways=ways, shots=shots, queries=queries)
    task = core.task_distribution(split, **{k: v for k, v in (("ways", ways), ("shots", shots)) if v})
    setting = {"split": split, "step": int(state["step"]), "algorithm": cfg.algorithm.name}
    if task.kind == "classification":
        setting.update(ways=ways or cfg.task.ways, shots=shots or cfg.task.shots)
    else:
        setting.update(shots=shots or cfg.task.shots)
    if core.algorithm.name in ("maml", "fomaml", "reptile"):  # only these adapt with an inner loop
        setting["inner_steps"] = inner_steps or cfg.algorithm.eval_inner_steps or cfg.algorithm.inner_steps
    return {**out, **setting}


def evaluate_oneshot_runs(run: str, runs_dir: str, inner_steps=None):
    """Accuracy and error over the official 20-run, 400-trial one-shot layout."""
    import distmeta
    from distmeta.data.oneshot_runs import evaluate_runs, read_runs

    model = distmeta.load(run)
    size = model.config.data.image_size

    def predict(support_x, query_x):
        import numpy as np
        import torch

        sx = torch.as_tensor(support_x, dtype=torch.float32)[:, None] / 255.0
        qx = torch.as_tensor(query_x, dtype=torch.float32)[:, None] / 255.0
        return model.adapt(sx, torch.arange(len(sx)), inner_steps).predict(qx).cpu().numpy()

    result = evaluate_runs(read_runs(runs_dir, image_size=size), predict)
    return {"accuracy": result["accuracy"], "error": result["error"], "trials": result["trials"],
            "per_run": result["per_run"]}


def cmd_eval(args) -> int:
    result = evaluate_run(args.run, args.episodes, args.ways, args.shots, args.queries, args.inner_steps,
                          args.split, args.data_root, args.omniglot_runs)
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
