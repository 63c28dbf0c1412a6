"""Helper of ``benchmarks/gpu_bundle.sh`` (the script is the interface; see its header).

Subcommands (standard library only; runs on the build machine and on the GPU machine):

  ray-reqs WHEEL            Ray's own ``Requires-Dist`` without extras, one per line
  strip WHEEL OUT           WHEEL without ``ray/jars/*`` (the Java jar) written to OUT:
                            entries copied with their ZipInfo (exec bits of raylet and
                            gcs_server survive), RECORD rewritten without the jar
  fix-record WHEEL DIR      write WHEEL's RECORD without ``ray/jars/*`` lines to
                            DIR/<dist-info>/RECORD (after ``zip -d``; the shell re-adds it)
  check DIR --python X.Y    every wheel in DIR installs on CPython X.Y manylinux x86_64
                            and every non-extra requirement of every wheel is met inside
                            DIR or by what the GPU machine has (numpy); nothing
                            torch/CUDA-related is in DIR; writes DIR/MANIFEST.txt
  install DIR SITE          unzip every wheel of DIR into SITE (fallback when the
                            Python there has no pip), keeping the exec bits
"""
from __future__ import annotations

import hashlib
import base64
import os
import re
import sys
import zipfile
from pathlib import Path

JAR_PREFIX = "ray/jars/"
# on the GPU machine with torch already (benchmarks/README.md: torch 2.11, numpy, pyyaml, PIL, pytest)
PRESENT_ON_TARGET = {"numpy"}
FORBIDDEN = re.compile(r"^(torch|torchvision|triton|nvidia[-_].*|numpy|cupy.*)$")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(path: Path):
    parts = path.name[:-4].split("-")
    return canon(parts[0]), parts[1]


def dist_info(zf: zipfile.ZipFile) -> str:
    names = {n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info")}
    if len(names) != 1:
        raise SystemExit(f"{zf.filename}: expected one .dist-info folder, found {sorted(names)}")
    return names.pop()


def metadata(zf: zipfile.ZipFile) -> str:
    return zf.read(f"{dist_info(zf)}/METADATA").decode("utf-8")


def requires(meta: str):
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]


# -- a tiny PEP 508 subset: name, extras, markers on python_version / extra / platform ----------------
def parse_req(req: str):
    spec, _, marker = req.partition(";")
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", spec)
    return canon(m.group(1)), m.group(3).strip().strip("()"), marker.strip()


def marker_true(marker: str, python: str) -> bool:
    """Evaluate a requirement's environment marker for CPython ``python`` on Linux x86_64,
    with no extra requested. Uses ``packaging`` when importable (pip's vendored copy too)."""
    if not marker:
        return True
    env = {"python_version": python, "python_full_version": python + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    try:
        from packaging.markers import Marker
    except ImportError:
        try:
            from pip._vendor.packaging.markers import Marker
        except ImportError:
            Marker = None
    if Marker is not None:
        return Marker(marker).evaluate(env)
    # no packaging at all: requirements gated on an extra are off, everything else on
    return "extra" not in marker


def version_ok(version: str, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        try:
            from pip._vendor.packaging.specifiers import SpecifierSet
        except ImportError:
            return True
    return SpecifierSet(spec).contains(version, prereleases=True)


def python_tag_ok(py_tag: str, abi: str, target: str) -> bool:
    """Wheel python tag ``py_tag`` (with ``abi``) installs on ``target`` (e.g. cp312)?"""
    if py_tag in ("py3", target):
        return True
    m = re.fullmatch(r"(cp|py)3(\d+)", py_tag)
    # abi3 / pure-python wheels built for an older 3.x run on newer ones
    return bool(m) and abi in ("abi3", "none") and int(m.group(2)) <= int(target[3:])


# -- subcommands -----------------------------------------------------------------------------------
def cmd_ray_reqs(wheel: str) -> int:
    with zipfile.ZipFile(wheel) as zf:
        for req in requires(metadata(zf)):
            if "extra" not in parse_req(req)[2]:   # Ray's core requirements: no extra named
                print(req)
    return 0


def record_without_jar(zf: zipfile.ZipFile) -> tuple[str, bytes]:
    name = f"{dist_info(zf)}/RECORD"
    lines = zf.read(name).decode("utf-8").splitlines(keepends=True)
    return name, "".join(l for l in lines if not l.startswith(JAR_PREFIX)).encode("utf-8")


def cmd_strip(wheel: str, out: str) -> int:
    """Repack without the jar. Python's zipfile cannot copy compressed data raw, so every
    entry is recompressed (deflate, level 6); each ZipInfo (name, date, external_attr with
    the Unix mode) is reused, so pip installs raylet/gcs_server executable."""
    tmp = out + ".part"
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w") as dst:
        record_name, record = record_without_jar(src)
        for info in src.infolist():
            if info.filename.startswith(JAR_PREFIX):
                dropped += 1
                continue
            data = record if info.filename == record_name else src.read(info)
            new = zipfile.ZipInfo(info.filename, info.date_time)
            new.external_attr, new.create_system = info.external_attr, info.create_system
            new.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(new, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    os.replace(tmp, out)
    print(f"stripped {dropped} entries under {JAR_PREFIX} -> {out} ({os.path.getsize(out) / 2**20:.1f} MiB)")
    return 0


def cmd_fix_record(wheel: str, folder: str) -> int:
    with zipfile.ZipFile(wheel) as zf:
        name, record = record_without_jar(zf)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record)
    print(name)
    return 0


def cmd_check(folder: str, python: str) -> int:
    tag = "cp" + python.replace(".", "")
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        print(f"check: no wheels in {folder}", file=sys.stderr)
        return 1
    have = {}
    bad = []
    for w in wheels:
        name, version = wheel_name_version(w)
        have[name] = version
        if FORBIDDEN.match(name):
            bad.append(f"{w.name}: torch/CUDA/numpy-related, the GPU machine has its own")
        py_tags, abi, plat = w.name[:-4].split("-")[-3:]
        if not (any(python_tag_ok(t, abi, tag) for t in py_tags.split(".")) and
                all(p == "any" or ("manylinux" in p and p.endswith("x86_64")) for p in plat.split("."))):
            bad.append(f"{w.name}: not installable on {tag} linux x86_64 ({py_tags}-{abi}-{plat})")
        with zipfile.ZipFile(w) as zf:
            if any(n.startswith(JAR_PREFIX) for n in zf.namelist()):
                bad.append(f"{w.name}: still holds {JAR_PREFIX}")
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for req in requires(metadata(zf)):
                name, spec, marker = parse_req(req)
                if not marker_true(marker, python):
                    continue
                if name in have:
                    if not version_ok(have[name], spec):
                        bad.append(f"{w.name} needs {req!r}; the bundle has {name} {have[name]}")
                elif name not in PRESENT_ON_TARGET:
                    bad.append(f"{w.name} needs {req!r}, which is not in the bundle")
    lines = []
    for w in wheels:
        digest = base64.urlsafe_b64encode(hashlib.sha256(w.read_bytes()).digest()).decode().rstrip("=")
        lines.append(f"{w.name}  {w.stat().st_size}  sha256={digest}")
    (Path(folder) / "MANIFEST.txt").write_text(
        f"# wheels for CPython {python} manylinux x86_64 (benchmarks/gpu_bundle.sh)\n" + "\n".join(lines) + "\n")
    for name in sorted(have):
        print(f"  {name:<28} {have[name]}")
    if bad:
        print("check FAILED:", *bad, sep="\n  ", file=sys.stderr)
        return 1
    print(f"check: {len(wheels)} wheels, requirements closed for CPython {python} (assumed present: "
          f"{', '.join(sorted(PRESENT_ON_TARGET))})")
    return 0


def cmd_install(folder: str, site: str) -> int:
    """What ``pip install --no-index --no-deps --target SITE`` does for these wheels, for a
    Python without pip: unzip, keep Unix modes, drop the .data/ scripts (console entry
    points are not needed: the check runs everything with ``python -c``/``-m``)."""
    site_path = Path(site)
    site_path.mkdir(parents=True, exist_ok=True)
    for w in sorted(Path(folder).glob("*.whl")):
        with zipfile.ZipFile(w) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                        info.filename = "/".join(parts[2:])
                    else:
                        continue
                target = zf.extract(info, site_path)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode | 0o644)
        print(f"  unzipped {w.name}")
    return 0


def main(argv) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "ray-reqs" and len(args) == 1:
        return cmd_ray_reqs(args[0])
    if cmd == "strip" and len(args) == 2:
        return cmd_strip(*args)
    if cmd == "fix-record" and len(args) == 2:
        return cmd_fix_record(*args)
    if cmd == "check" and len(args) == 3 and args[1] == "--python":
        return cmd_check(args[0], args[2])
    if cmd == "install" and len(args) == 2:
        return cmd_install(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
