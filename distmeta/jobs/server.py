"""Which Ray job server ``distmeta submit``/``distmeta jobs`` talk to, and with which token.

Contract:

- :func:`resolve_address` picks the address, first that is set: ``--address``,
  ``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS``, ``http://127.0.0.1:8265``. Unlike Ray's
  own client, an explicit ``--address`` wins over the environment. By the address
  rule (:mod:`distmeta.address`) an ``http(s)://`` address is the job server itself;
  a cluster address (``HOST:PORT``, ``ray://``, ``auto``) is handed to Ray's client,
  which asks the cluster for its job server; ``local`` is refused. Nothing is
  contacted here.
- :func:`token_headers` is the ``Authorization`` header distmeta sends itself (or
  none, leaving it to Ray). Token authentication (Ray >= 2.52): Ray's client sends
  the cluster token when ``RAY_AUTH_MODE=token`` is set and finds it in
  ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
  ``~/.ray/auth_token``. distmeta also sends the token when ``RAY_AUTH_MODE`` is unset
  but ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` is, and ``--token-file FILE``
  sends the token in FILE whatever the environment says. Every failure is a
  one-line :class:`~distmeta.errors.DistmetaError`.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence

from distmeta.address import EMBEDDED, address_kind
from distmeta.errors import DistmetaError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TUNNEL_HINT = ("start the cluster, or tunnel to its dashboard port "
               "(ray dashboard cluster/aws.yaml, or ssh -L 8265:localhost:8265 HEAD)")


def resolve_address(address: Optional[str] = None,
                    environ: Mapping[str, str] = os.environ) -> str:
    """The job server (or cluster) address the user asked for, minus a trailing slash."""
    chosen = address
    if not chosen:
        chosen = next((environ[v] for v in ADDRESS_ENV_VARS if environ.get(v)), None)
    chosen = (chosen or DEFAULT_ADDRESS).strip().rstrip("/")
    if address_kind(chosen) == EMBEDDED:
        raise DistmetaError(f"address {chosen!r} starts an embedded Ray (train, tune); jobs "
                            f"need a job server, e.g. {DEFAULT_ADDRESS}")
    return chosen


def _read_token(path: str, label: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise DistmetaError(f"{label}: {exc.strerror or exc}") from None
    if not token:
        raise DistmetaError(f"{label}: the file is empty")
    return token


def token_headers(token_file: Optional[str] = None,
                  environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """An explicit ``Authorization`` header when distmeta sends the token itself, else {}."""
    token = None
    mode = environ.get("RAY_AUTH_MODE")
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if token_file:
        token = _read_token(token_file, f"--token-file {token_file}")
    elif mode is None:
        # Ray itself only sends a token when RAY_AUTH_MODE=token; a user who set the
        # token but not the mode still means it to be used.
        token = (environ.get("RAY_AUTH_TOKEN") or "").strip() or None
        if token is None and path:
            token = _read_token(path, f"RAY_AUTH_TOKEN_PATH={path}")
    elif mode.lower() == "token" and path and not environ.get("RAY_AUTH_TOKEN"):
        # Ray reads this file itself, and aborts the process when it cannot: check it
        # here so that the failure is one line.
        _read_token(path, f"RAY_AUTH_TOKEN_PATH={path}")
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def without_env(names: Sequence[str] = ADDRESS_ENV_VARS) -> Iterator[None]:
    """Hide environment variables for the block (Ray's client lets ``RAY_ADDRESS`` and
    ``RAY_API_SERVER_ADDRESS`` win over the address it is given)."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
