"""The distmeta that travels with a job: a ``distmeta/`` folder for ``runtime_env["py_modules"]``.

Contract: :func:`stage_package` returns a ``distmeta`` package directory laid out as
``pip install`` would install it, ``distmeta.envs`` included (the project maps the
top-level ``envs/`` folder to ``distmeta.envs`` through pyproject's
``[tool.setuptools] package-dir``). From a source checkout it is the contents of a
wheel built by :func:`build_wheel` (on a copy of the sources: nothing is written into
the checkout); otherwise, or with ``wheel=False``, or when the wheel build fails or
leaves out a subpackage of the imported distmeta (a warning says which), the imported
package directory with the mapped subpackages copied in.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

from distmeta.errors import DistmetaError

_IGNORE = ("__pycache__", "*.pyc", "*.egg-info")
_TOP_LEVEL_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md",
                    "README.rst", "LICENSE", "LICENSE.txt")


def project_root() -> Optional[Path]:
    """The source checkout the imported distmeta comes from, if it is one."""
    import distmeta

    root = Path(distmeta.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*["\']distmeta["\']',
                                         pyproject.read_text(), re.M):
        return root
    return None


def package_dir_mapping(root: Optional[Path]) -> Dict[str, str]:
    """pyproject's ``[tool.setuptools] package-dir`` (``{"distmeta.envs": "envs", ...}``)."""
    if root is not None:
        try:
            import tomllib

            data = tomllib.loads((root / "pyproject.toml").read_text())
            mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
            if isinstance(mapping, dict):
                return {str(k): str(v) for k, v in mapping.items()}
        except Exception:  # py3.10 without tomllib, or a malformed file
            pass
    return {"distmeta": "distmeta", "distmeta.envs": "envs"}


def build_wheel(dest: Path, root: Optional[Path] = None) -> Path:
    """``pip wheel --no-deps`` of the distmeta source tree into ``dest``; the wheel path."""
    root = root or project_root()
    if root is None:
        raise DistmetaError("distmeta is not imported from a source tree: nothing to build "
                            "a wheel from (use --no-wheel)")
    src = Path(dest) / "src"
    src.mkdir(parents=True)
    for name in _TOP_LEVEL_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for rel in sorted(set(package_dir_mapping(root).values()) | {"distmeta"}):
        if (root / rel).is_dir() and not (src / rel).exists():
            shutil.copytree(root / rel, src / rel, ignore=shutil.ignore_patterns(*_IGNORE))
    out = Path(dest) / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-index", "--quiet", "--wheel-dir", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out.glob("distmeta-*.whl")) if out.is_dir() else []
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise DistmetaError(f"building the distmeta wheel failed: {tail[0]}")
    return wheels[0]


def missing_subpackages(members: List[str]) -> List[str]:
    """Subpackages of the imported distmeta (``distmeta/jobs/__init__.py``...) that the
    wheel with these members lacks: a pyproject ``packages`` list that forgot one."""
    import distmeta

    here = Path(distmeta.__file__).resolve().parent
    have = set(members)
    return sorted(
        "distmeta." + ".".join(init.parent.relative_to(here).parts)
        for init in here.rglob("__init__.py")
        if init.parent != here and "__pycache__" not in init.parts
        and f"distmeta/{init.relative_to(here).as_posix()}" not in have)


def _unpack_wheel(whl: Path, target_root: Path) -> Path:
    with zipfile.ZipFile(whl) as zf:
        members = [m for m in zf.namelist() if m.startswith("distmeta/")]
        missing = missing_subpackages(members)
        if missing:
            raise DistmetaError(f"the wheel lacks {', '.join(missing)} (list them in "
                                "pyproject.toml [tool.setuptools] packages)")
        zf.extractall(target_root, members=members)
    return target_root / "distmeta"


def _copy_imported(target: Path, root: Optional[Path]) -> Path:
    """The imported package directory, plus the subpackages mapped from elsewhere."""
    import distmeta

    ignore = shutil.ignore_patterns(*_IGNORE)
    shutil.copytree(Path(distmeta.__file__).resolve().parent, target, ignore=ignore)
    for name in package_dir_mapping(root):
        parts = name.split(".")
        if len(parts) != 2 or parts[0] != "distmeta" or (target / parts[1]).exists():
            continue
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            shutil.copytree(locations[0], target / parts[1], ignore=ignore)
    return target


def stage_package(dest: Path, wheel: bool = True) -> Path:
    """A ``distmeta`` package directory under ``dest`` to ship through ``py_modules``."""
    target_root = Path(dest) / "py_modules"
    root = project_root()
    if wheel and root is not None:
        try:
            return _unpack_wheel(build_wheel(Path(dest) / "build", root), target_root)
        except DistmetaError as exc:
            shutil.rmtree(target_root, ignore_errors=True)
            print(f"distmeta: warning: {exc}; shipping the package directory instead",
                  file=sys.stderr)
    return _copy_imported(target_root / "distmeta", root)
