"""``distmeta submit`` and ``distmeta jobs {list,status,logs,stop,delete}``.

Contract: :func:`register` adds both commands to distmeta's parser
(:mod:`distmeta.cli`). Each command is a few calls to :mod:`distmeta.jobs.client`;
the exit status is 0 on success, 2 on a distmeta error (one line on stderr), and for
``submit`` (which follows the job's logs unless ``--no-wait``, like ``ray job
submit``) and ``jobs logs --follow``, the job's exit status.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from distmeta.jobs import client as jc
from distmeta.jobs.server import DEFAULT_ADDRESS
from distmeta.jobs.spec import job_command, user_runtime_env


def _client(args: argparse.Namespace):
    return jc.job_client(args.address, args.token_file)


def _cmd_submit(args: argparse.Namespace) -> int:
    runtime_env = user_runtime_env(args.runtime_env, args.pip or [], args.env or [])
    job_command(args.job_command, resume=args.resume)  # a bad command fails before connecting
    client = _client(args)
    job_id = jc.submit(client, args.job_command, runtime_env=runtime_env,
                       working_dir=args.working_dir, auto_working_dir=not args.no_working_dir,
                       wheel=not args.no_wheel, resume=args.resume,
                       submission_id=args.submission_id,
                       entrypoint_num_cpus=args.entrypoint_num_cpus,
                       entrypoint_num_gpus=args.entrypoint_num_gpus, python=args.python)
    print(job_id, flush=True)
    if args.no_wait:
        print(f"distmeta: follow with: distmeta jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    return jc.follow_and_report(client, job_id)


def _fmt_time(ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _cmd_list(args: argparse.Namespace) -> int:
    client = _client(args)
    with jc.client_errors(client.get_address()):
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    rows = [("ID", "STATUS", "START", "ENTRYPOINT")]
    for j in jobs:
        entry = j.entrypoint or ""
        rows.append((j.submission_id or j.job_id or "-", str(j.status),
                     _fmt_time(j.start_time), entry if len(entry) <= 70 else entry[:67] + "..."))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    with jc.client_errors(client.get_address(), args.job_id):
        info = client.get_job_info(args.job_id)
    print(f"{args.job_id}: {info.status}")
    if info.message:
        print(f"  message: {jc.one_line(info.message)}")
    print(f"  entrypoint: {info.entrypoint}")
    print(f"  start: {_fmt_time(info.start_time)}  end: {_fmt_time(info.end_time)}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    with jc.client_errors(client.get_address(), args.job_id):
        if args.follow:
            client.get_job_status(args.job_id)  # a missing job fails here, in one line
        else:
            sys.stdout.write(client.get_job_logs(args.job_id) or "")
    if args.follow:
        return jc.follow_and_report(client, args.job_id)
    sys.stdout.flush()
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    client = _client(args)
    with jc.client_errors(client.get_address(), args.job_id):
        stopped = client.stop_job(args.job_id)
    if not stopped:
        print(f"{args.job_id}: not running (already finished)")
        return 0
    print(f"{args.job_id}: stop requested")
    if args.wait:
        print(f"{args.job_id}: {jc.wait_for_job(client, args.job_id)}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    jc.delete(_client(args), args.job_id)
    print(f"{args.job_id}: deleted")
    return 0


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--address", default=None,
                   help=f"job server, e.g. {DEFAULT_ADDRESS} (default: "
                        f"$RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, {DEFAULT_ADDRESS}); a "
                        "cluster address (HOST:PORT, ray://, auto) lets Ray find its job server")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the cluster's token (default: Ray's own lookup: "
                        "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                        "or ~/.ray/auth_token)")
    return p


def _add_runtime_env_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-env", default=None, metavar="FILE",
                   help="runtime_env for the job, YAML or JSON (pip, env_vars, ...); merged "
                        "with distmeta's py_modules and working_dir")
    p.add_argument("--pip", action="append", metavar="PKG",
                   help="pip package installed for the job (repeatable)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable); credentials "
                        "(*_TOKEN, *_SECRET*, *PASSWORD*, AWS/GCP keys) are refused: give "
                        "the nodes their own access")
    p.add_argument("--working-dir", default=None, metavar="DIR",
                   help="directory uploaded as the job's working directory (experiment "
                        "files); default: the current directory when the command names "
                        "files in it")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload no working directory (the job gets an empty one)")
    p.add_argument("--no-wheel", action="store_true",
                   help="ship the imported distmeta package directory instead of the "
                        "contents of a wheel built from the source tree")


def _add_submit(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "submit", parents=[common],
        help="run a distmeta command as a job on a Ray cluster",
        description="Submit `distmeta COMMAND...` as a Ray job and follow its logs until "
                    "it ends (exit status: the job's). The job runs this distmeta "
                    "(shipped with the job), in a working directory that carries the "
                    "experiment files.",
        epilog="example: distmeta submit --pip tqdm -- train experiments/sinusoid_maml.yaml "
               "--steps 100 --out /shared/runs/sin")
    p.add_argument("--no-wait", action="store_true",
                   help="print the job id and return at once, without following the logs")
    p.add_argument("--follow", action="store_true",
                   help="follow the logs: the default (kept for scripts that pass it)")
    _add_runtime_env_options(p)
    p.add_argument("--resume", default=None, choices=["auto"],
                   help="pass `--resume auto` to `train`, so a retried job continues from "
                        "the run folder's latest checkpoint")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the job's driver")
    p.add_argument("--entrypoint-num-gpus", type=float, default=None,
                   help="GPUs reserved for the job's driver")
    p.add_argument("--python", default="python",
                   help="python executable on the cluster (default: python)")
    p.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the distmeta command to run, e.g. -- train experiments/x.yaml")
    p.set_defaults(func=_cmd_submit)


def _add_jobs(subparsers, common: argparse.ArgumentParser) -> None:
    jobs = subparsers.add_parser("jobs", help="list, inspect, follow, stop and delete Ray jobs",
                                 description="Inspect jobs on a Ray cluster.")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions = [("list", _cmd_list, "list the cluster's jobs"),
               ("status", _cmd_status, "status of one job"),
               ("logs", _cmd_logs, "logs of one job"),
               ("stop", _cmd_stop, "stop a running job"),
               ("delete", _cmd_delete, "delete a finished job and its data (stop it first)")]
    parsers = {}
    for name, func, help_text in actions:
        parsers[name] = jsub.add_parser(name, parents=[common], help=help_text)
        if name != "list":
            parsers[name].add_argument("job_id")
        parsers[name].set_defaults(func=func)
    parsers["logs"].add_argument("--follow", action="store_true",
                                 help="stream until the job ends; exit with its status")
    parsers["stop"].add_argument("--wait", action="store_true",
                                 help="wait until it has stopped")

    def _jobs_help(_args: argparse.Namespace) -> int:
        jobs.print_help()
        return 2

    jobs.set_defaults(func=_jobs_help)


def register(subparsers) -> None:
    """Add ``submit`` and ``jobs {list,status,logs,stop,delete}`` to distmeta's CLI."""
    common = _connection_options()
    _add_submit(subparsers, common)
    _add_jobs(subparsers, common)
