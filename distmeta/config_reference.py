"""``python -m distmeta.config_reference [--check FILE]``: the config reference
(every field, type, default, range, one-line meaning) generated from the schema
and the algorithms' own config models. ``--check`` exits 1 when FILE differs."""
from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import List, Type

from pydantic import BaseModel

from distmeta.config import ALGORITHMS
from distmeta.schema import AlgorithmConfig, ExperimentConfig, Section

SECTIONS = ["data", "task", "model", "optim", "engine", "eval", "checkpoint", "tracking", "rl", "tune"]


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "choice"
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        names = " or ".join(_type_name(a) for a in inner)
        return f"{names} or null" if len(inner) < len(args) else names
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if origin is typing.Annotated:
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def _choices(annotation) -> List[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return [str(a) for a in args]
    return [c for a in args for c in _choices(a)] if origin is typing.Union else []


def _range(field) -> str:
    parts = []
    members = [field]
    if typing.get_origin(field.annotation) is typing.Union:   # e.g. engine.workers: int >= 0 or auto
        members += [typing.get_args(a)[1] for a in typing.get_args(field.annotation)
                    if typing.get_origin(a) is typing.Annotated and hasattr(typing.get_args(a)[1], "metadata")]
    for meta in [m for f in members for m in f.metadata]:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
    choices = _choices(field.annotation)
    if choices:
        parts.append(" \\| ".join(choices))
    return ", ".join(parts)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else repr(value)
    return repr(field.default)


def _table(model: Type[BaseModel], prefix: str, own_only: Type[BaseModel] = None) -> List[str]:
    rows = ["| field | type | default | range / choices | meaning |", "| --- | --- | --- | --- | --- |"]
    sections = []
    for name, field in model.model_fields.items():
        if own_only is not None and name in own_only.model_fields:
            continue
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, Section)]
        sub = inner[0] if inner else (ann if isinstance(ann, type) and issubclass(ann, Section) else None)
        if sub is not None and sub is not AlgorithmConfig:
            sections.append((f"{prefix}{name}", sub))
            continue
        type_name = _type_name(ann)
        rows.append(f"| `{prefix}{name}` | {type_name} | `{_default(field)}` | {_range(field)} | "
                    f"{field.description or ''} |")
    out = rows + [""]
    for name, sub in sections:
        out += [f"### `{name}`", ""] + _table(sub, name + ".")
    return out


def reference() -> str:
    lines = ["# Config reference", "",
             "Generated from the schema by `python -m distmeta.config_reference > docs/config.md`; CI checks "
             "that it is current. Every field is optional; unknown fields, non-finite numbers and values out of "
             "range are errors that name the field.", "", "## Top level", ""]
    top = [n for n in ExperimentConfig.model_fields if n not in SECTIONS + ["algorithm"]]
    rows = ["| field | type | default | range / choices | meaning |", "| --- | --- | --- | --- | --- |"]
    for name in top:
        f = ExperimentConfig.model_fields[name]
        rows.append(f"| `{name}` | {_type_name(f.annotation)} | `{_default(f)}` | {_range(f)} | {f.description} |")
    lines += rows + [""]
    lines += ["## `algorithm`", "", "Fields every algorithm has:", ""] + _table(AlgorithmConfig, "algorithm.")
    for name in [n for n in ALGORITHMS.names() if n not in ALGORITHMS.user_entries()]:  # distmeta's own
        model = getattr(ALGORITHMS.get(name), "config_class", AlgorithmConfig)
        own = [n for n in model.model_fields if n not in AlgorithmConfig.model_fields]
        lines += [f"### `algorithm.name: {name}`", ""]
        lines += (_table(model, "algorithm.", AlgorithmConfig) if own else ["No fields of its own.", ""])
    for section in SECTIONS:
        f = ExperimentConfig.model_fields[section]
        model = [a for a in getattr(f.annotation, "__args__", (f.annotation,)) if isinstance(a, type)][0]
        lines += [f"## `{section}`", "", f.description or "", ""] + _table(model, section + ".")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distmeta.config_reference")
    parser.add_argument("--check", metavar="FILE", help="exit 1 when FILE is not the current reference")
    args = parser.parse_args(argv)
    text = reference()
    if args.check:
        if Path(args.check).read_text() != text:
            print(f"{args.check} is out of date: run python -m distmeta.config_reference > {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
