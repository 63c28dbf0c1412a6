"""Bad input fails early with one line naming the field (docs/architecture.md, invariants):
config fields, data files, checkpoints from another config, and files that are
not checkpoints (which must never execute code)."""
from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import distmeta
from distmeta import cli
from distmeta.config import ConfigError, from_dict, load_config
from distmeta.data import DataError
from distmeta.engine.run_dir import CheckpointError
from distmeta.errors import DistmetaError

SINUSOID = {
    "name": "cfg_test", "data": {"dataset": "none"},
    "task": {"kind": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "optim": {"lr": 0.001, "meta_batch": 2, "steps": 3},
    "eval": {"every": 100, "episodes": 2, "final_episodes": 2},
    "checkpoint": {"every": 1},
}


def sinusoid(**sections):
    cfg = copy.deepcopy(SINUSOID)
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    return cfg


def omniglot(root, **sections):
    cfg = {"name": "cfg_omniglot",
           "data": {"dataset": "omniglot", "preset": "minimal", "root": str(root), "download": False},
           "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": 1},
           "model": {"name": "conv4", "channels": 8}, "algorithm": {"name": "protonet"},
           "optim": {"steps": 1, "meta_batch": 1}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- fields
@pytest.mark.parametrize("data, field", [
    ({"nmae": "x"}, "nmae"),
    ({"optim": {"lrr": 0.1}}, "optim.lrr"),
    ({"data": {"train": {"set": ["background"]}}}, "data.train.set"),
])
def test_unknown_key(data, field):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    one_line_error(info, f"{field}: unknown field", "allowed:")


@pytest.mark.parametrize("data, field, expected", [
    ({"optim": {"lr": "fast"}}, "optim.lr", "expected a number"),
    ({"optim": {"steps": 2.5}}, "optim.steps", "expected an integer"),
    ({"optim": {"steps": True}}, "optim.steps", "expected an integer"),
    ({"data": {"download": "yes"}}, "data.download", "expected true or false"),
    ({"model": {"hidden": 40}}, "model.hidden", "expected a list"),
    ({"model": {"hidden": [40, "x"]}}, "model.hidden[1]", "expected an integer"),
    ({"task": "sinusoid"}, "task", "expected a mapping"),
])
def test_wrong_type(data, field, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    one_line_error(info, f"{field}: {expected}")


@pytest.mark.parametrize("data, field", [
    ({"optim": {"lr": -0.001}}, "optim.lr"),
    ({"algorithm": {"inner_lr": -0.4}}, "algorithm.inner_lr"),
    ({"optim": {"meta_batch": 0}}, "optim.meta_batch"),
    ({"task": {"ways": 0}}, "task.ways"),
])
def test_out_of_range(data, field):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    one_line_error(info, f"{field}: must be")


@pytest.mark.parametrize("data, field, expected", [
    ({"task": {"train_shots": 5}}, "task.train_shots", "applies to classification tasks"),
    ({"task": {"train_ways": 20}}, "task.train_ways", "applies to classification tasks"),
    ({"algorithm": {"name": "maml", "head_init": "prototypes"}}, "algorithm.head_init", "prototypes needs classification"),
    ({"algorithm": {"name": "reptile", "head_init": "prototypes"}}, "algorithm.head_init", "prototypes needs classification"),
])
def test_classification_only_fields_refused_for_regression(data, field, expected):
    """The default task is sinusoid regression."""
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    one_line_error(info, f"{field}: {expected}", "'sinusoid'")


@pytest.mark.parametrize("data, field, allowed", [
    ({"algorithm": {"executor": "threads"}}, "algorithm.executor", "'loop', 'vmap', 'auto'"),
    ({"engine": {"device": "tpu"}}, "engine.device", "'cuda'"),
    ({"data": {"preset": "full"}}, "data.preset", "'minimal'"),
    ({"algorithm": {"name": "maml2"}}, "algorithm.name", "'reptile'"),
    ({"model": {"name": "resnet50"}}, "model.name", "'conv4'"),
])
def test_bad_choice_names_allowed_values(data, field, allowed):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    one_line_error(info, field, allowed)


def test_yaml_overrides_and_cli_validate(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SINUSOID))
    assert load_config(path, ["optim.lr=0.01", "algorithm.executor=vmap"]).optim.lr == 0.01
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optim.lr=-1"])
    one_line_error(info, "optim.lr")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    one_line_error(info, "missing.yaml")
    assert cli.main(["validate", str(path), "--set", "algorithm.executor=gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distmeta: error: algorithm.executor")


# --------------------------------------------------------------------------- ways vs classes
def test_ways_larger_than_held_out_classes_fails_before_training(tmp_path, omniglot_dir):
    """30-way on a validation split of 17 classes (Tagalog): rejected before any step runs."""
    cfg = omniglot(omniglot_dir, data={"preset": None, "train": {"sets": ["background_small1"]},
                                      "val": {"sets": ["background_small2"], "alphabets": ["Tagalog"]}},
                   task={"ways": 30})
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        distmeta.train(cfg, out=out, progress=False)
    one_line_error(info, "task.ways", "30", "17", "'val'")
    assert not out.exists()  # nothing was started or written


def test_ways_larger_than_train_classes(tmp_path, omniglot_dir):
    cfg = omniglot(omniglot_dir, task={"ways": 600})  # small1 has 136 characters
    with pytest.raises(ConfigError) as info:
        distmeta.train(cfg, out=tmp_path / "run", progress=False)
    one_line_error(info, "task.ways", "600", "136")


# --------------------------------------------------------------------------- data files
def test_missing_data_file_without_download(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:   # the full sets do not ship with distmeta
        distmeta.train(omniglot(empty, data={"preset": "official"}), out=tmp_path / "run", progress=False)
    one_line_error(info, "images_background.zip", str(empty), "data.download")
    assert not (tmp_path / "run").exists()


def test_corrupt_zip(tmp_path, omniglot_dir):
    root = tmp_path / "root"
    root.mkdir()
    (root / "images_background_small1.zip").write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    shutil.copy(omniglot_dir / "images_background_small2.zip", root)
    with pytest.raises(DataError) as info:   # an existing official zip is MD5-checked first
        distmeta.train(omniglot(root), out=tmp_path / "run", progress=False)
    one_line_error(info, "images_background_small1.zip", "MD5", "differs from the official")
    with pytest.raises(DataError) as info:   # and without the check, the reader says it in one line
        distmeta.train(omniglot(root, data={"verify_md5": False}), out=tmp_path / "run2", progress=False)
    one_line_error(info, "images_background_small1.zip", "not a readable zip")


def test_cli_data_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(omniglot(tmp_path / "nowhere", data={"preset": "official", "download": False})))
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "images_background.zip not found" in err


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return distmeta.train(sinusoid(), out=tmp_path_factory.mktemp("cfg") / "run", progress=False).path


@pytest.mark.parametrize("change, field", [
    ({"optim": {"lr": 0.01}}, "optim.lr"),
    ({"model": {"hidden": [16, 8]}}, "model.hidden"),
    ({"seed": 7}, "seed"),
])
def test_resume_from_another_config(tiny_run, change, field):
    with pytest.raises(CheckpointError) as info:
        distmeta.train(sinusoid(**change), resume=tiny_run, steps=6, progress=False)
    one_line_error(info, "another config", f"{field} is")


def test_resume_a_checkpoint_written_before_a_field_existed(tiny_run, tmp_path):
    """A field missing from a checkpoint's config (added to distmeta since) counts as its default."""
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        del ckpt["config"]["algorithm"]["head_init"], ckpt["config"]["algorithm"]["inner_lr"]
        torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:   # a missing field set away from its default still differs
        distmeta.train(sinusoid(algorithm={"inner_lr": 0.02}), resume=run, steps=6, progress=False)
    one_line_error(info, "another config", "algorithm.inner_lr is 0.01 there, 0.02 here")
    assert distmeta.train(sinusoid(), resume=run, steps=6, progress=False).step == 6


def test_a_run_with_fields_distmeta_no_longer_has_loads_evaluates_and_resumes(tiny_run, tmp_path, capsys):
    """A saved config's fields that this version's schema lacks (a removed option, in a section,
    in the algorithm's own section, a whole section) are dropped with one warning naming them;
    the same fields in a user's config or ``--set`` stay errors."""
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)

    def add_removed_fields(config):
        config["model"]["old_knob"] = 3
        config["algorithm"]["old_trick"] = True
        config["legacy"] = {"a": 1}
        return config

    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(add_removed_fields(saved)))
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        add_removed_fields(ckpt["config"])
        torch.save(ckpt, path)
    removed = "model.old_knob, legacy, algorithm.old_trick"

    with pytest.warns(UserWarning, match=f"ignoring {removed}"):
        model = distmeta.load(run)
    reference = distmeta.load(tiny_run)
    assert model.config == reference.config
    for name, value in reference.params.items():
        assert torch.equal(model.params[name], value), name

    assert cli.main(["eval", str(tiny_run), "--json"]) == 0
    expected = capsys.readouterr().out
    with pytest.warns(UserWarning) as warned:
        assert cli.main(["eval", str(run), "--json"]) == 0
    assert capsys.readouterr().out == expected
    [w] = warned   # outside pytest, the command prints it on stderr as this line:
    assert cli.warning_line(w.message, w.category, w.filename, w.lineno) == \
        f"distmeta: warning: {run}: written by a distmeta whose config had fields this version does not; " \
        f"ignoring {removed}\n"

    with pytest.warns(UserWarning, match=f"ignoring {removed}"):
        assert cli.main(["train", "--resume", str(run), "--steps", "4", "--no-progress", "--set", "model.typo=1"]) == 2
    assert "model.typo: unknown field" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=f"ignoring {removed}"):
        assert cli.main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert "old_knob" not in (run / "config.yaml").read_text()   # the resumed run is this version's
    with pytest.raises(ConfigError) as info:
        from_dict(sinusoid(model={"old_knob": 3}))
    one_line_error(info, "model.old_knob: unknown field")


def test_resume_allows_resumable_fields(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    result = distmeta.train(sinusoid(name="renamed", log_every=1, eval={"every": 50}), resume=run, steps=4,
                            progress=False)
    assert result.step == 4


def test_cli_resume_from_another_config(tiny_run, tmp_path, capsys):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(sinusoid(algorithm={"inner_steps": 2})))
    assert cli.main(["train", str(path), "--resume", str(tiny_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "algorithm.inner_steps" in err


def test_resume_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError) as info:
        distmeta.train(None, resume=tmp_path / "run", progress=False)
    one_line_error(info, "not a distmeta run folder")


def test_load_rejects_non_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint\n")
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a real torch file, but no distmeta checkpoint
    for path, needle in ((text, "not a readable distmeta checkpoint"), (plain, "not a distmeta checkpoint"),
                         (tmp_path / "missing.pt", "not found"), (tmp_path, "no checkpoint found")):
        with pytest.raises(CheckpointError) as info:
            distmeta.load(path)
        one_line_error(info, needle)


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_executes(tmp_path):
    # sanity check: the payload really does run on a plain pickle.load
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe))).close()
    assert probe.exists()

    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": 1, "model": Payload(marker)}))
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": 1, "config": {}, "model": Payload(marker)}, zipped)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    shutil.copy(zipped, run / "checkpoints" / "step_0000001.pt")
    for path in (raw, zipped, run):
        with pytest.raises(CheckpointError) as info:
            distmeta.load(path)
        one_line_error(info, "not a readable distmeta checkpoint")
        assert not marker.exists()
    with pytest.raises((CheckpointError, DistmetaError)):
        distmeta.train(None, resume=run, progress=False)
    assert not marker.exists()
