"""Job submission to a Ray cluster: ``distmeta submit`` and ``distmeta jobs``.

``distmeta submit [options] -- train experiments/x.yaml --steps 100`` runs
``python -m distmeta.cli train experiments/x.yaml --steps 100`` as a Ray job and
follows its logs. The job imports the *same* distmeta as the client: the package
travels through ``runtime_env["py_modules"]`` and the working directory only carries
experiment files. Everything goes through Ray's public ``JobSubmissionClient``.

One module per concern:

- :mod:`distmeta.jobs.server`: which job server (address) and which token (auth);
- :mod:`distmeta.jobs.package`: the distmeta shipped with a job (wheel, ``envs/``);
- :mod:`distmeta.jobs.spec`: the job's command and runtime environment;
- :mod:`distmeta.jobs.client`: the job client, submit, follow, wait, delete, errors;
- :mod:`distmeta.jobs.cli`: ``register(subparsers)`` for :mod:`distmeta.cli`.

This package re-exports the names other code and the tests use.
"""
from distmeta.jobs.client import (TERMINAL_STATUSES, client_errors, delete, exit_status,
                                  follow, job_client, submit, wait_for_job)
from distmeta.jobs.cli import register
from distmeta.jobs.package import build_wheel, project_root, stage_package
from distmeta.jobs.server import (ADDRESS_ENV_VARS, DEFAULT_ADDRESS, resolve_address,
                                  token_headers)
from distmeta.jobs.spec import (WORKING_DIR_EXCLUDES, entrypoint_for, job_command,
                                job_runtime_env, parse_env_pairs, refuse_credentials,
                                user_runtime_env)

__all__ = [
    "ADDRESS_ENV_VARS", "DEFAULT_ADDRESS", "TERMINAL_STATUSES", "WORKING_DIR_EXCLUDES",
    "build_wheel", "client_errors", "delete", "entrypoint_for", "exit_status", "follow",
    "job_client", "job_command", "job_runtime_env", "parse_env_pairs", "project_root",
    "refuse_credentials", "register", "resolve_address", "stage_package", "submit",
    "token_headers", "user_runtime_env", "wait_for_job",
]
