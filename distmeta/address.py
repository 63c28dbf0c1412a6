"""Where distmeta finds Ray: the address rule, one probe and one connect for every command.

The address rule:

- ``http://HOST:PORT`` / ``https://...`` is a **job server** (a Ray dashboard), as in
  Ray's Jobs docs. Only ``distmeta submit`` and ``distmeta jobs`` take one.
- ``HOST:PORT``, ``ray://HOST:PORT`` and ``auto`` name a running **cluster**; ``train``
  and ``tune`` join it. (``submit``/``jobs`` accept them too and let Ray find the
  cluster's job server.)
- ``local`` starts an **embedded** Ray for this process alone, whatever the
  environment says. An empty address means: the cluster in ``$RAY_ADDRESS`` when that
  holds a cluster address (so ``train`` honours ``RAY_ADDRESS``, and a submitted job,
  where Ray sets ``RAY_ADDRESS`` to its cluster, joins that cluster), else an embedded
  Ray. A job-server ``$RAY_ADDRESS`` is reported in one line on stderr and ignored.

Every address is checked before Ray sees it: a malformed one, or one where nothing
accepts TCP connections within seconds, is a one-line :class:`DistmetaError`
(``ray.init`` on a dead address can hang for minutes).
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple
from urllib.parse import urlsplit

from distmeta.errors import DistmetaError

PROBE_TIMEOUT_S = 3.0
JOB_SERVER, CLUSTER, EMBEDDED = "job server", "cluster", "embedded"
RULE = ("http(s):// addresses are job servers (distmeta submit, distmeta jobs); train and "
        "tune take a cluster (HOST:PORT, ray://HOST:PORT, auto) or local for an embedded Ray")


def address_kind(address: Optional[str]) -> str:
    """``JOB_SERVER``, ``CLUSTER`` or ``EMBEDDED`` (``local`` and empty) by the rule above.

    Only the form is looked at (nothing is contacted); a cluster address is also parsed,
    so a malformed one fails here.
    """
    text = (address or "").strip()
    if text in ("", "local"):
        return EMBEDDED
    if text.lower().startswith(("http://", "https://")):
        host_port(text)
        return JOB_SERVER
    if text == "auto":
        return CLUSTER
    if "://" in text and not text.startswith("ray://"):
        raise DistmetaError(f"address {text!r}: unknown scheme; {RULE}")
    host_port(text)
    return CLUSTER


def host_port(address: str) -> Tuple[str, int]:
    """(host, port) of ``HOST:PORT``, ``ray://HOST:PORT`` or ``http(s)://HOST[:PORT]``.

    http and https default to ports 80 and 443; other forms must name the port.
    """
    try:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise DistmetaError(f"address {address!r} is malformed ({exc})") from None
    if port is None:
        defaults = {"http": 80, "https": 443}
        if parts.scheme.lower() not in defaults:
            raise DistmetaError(f"address {address!r} names no port (HOST:PORT)")
        port = defaults[parts.scheme.lower()]
    if not parts.hostname:
        raise DistmetaError(f"address {address!r} names no host")
    return parts.hostname, port


def probe(address: str, what: str, timeout: float = PROBE_TIMEOUT_S, hint: str = "") -> None:
    """The one reachability check: fail within ``timeout`` seconds, with one line
    ``cannot reach WHAT at ADDRESS (reason)[; hint]``, when nothing accepts TCP
    connections at the address's host and port."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.timeout:
        reason = f"no answer in {timeout:g} s"
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
    raise DistmetaError(f"cannot reach {what} at {address} ({reason})"
                        + (f"; {hint}" if hint else ""))


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """:func:`probe` for a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``)."""
    probe(address, "a Ray cluster", timeout=timeout,
          hint="start it (ray start --head) or check engine.address")


class ClusterChoice(NamedTuple):
    """What :func:`connect_ray` does: ``mode`` is ``EMBEDDED`` or ``CLUSTER``;
    ``address`` the cluster address for ``ray.init``; ``note`` a line for stderr."""
    mode: str
    address: Optional[str] = None
    note: str = ""


def resolve_cluster_address(address: Optional[str],
                            environ: Mapping[str, str] = os.environ) -> ClusterChoice:
    """The address rule for ``train``/``tune`` (pure: reads only ``environ``)."""
    text = (address or "").strip()
    if text == "local":
        return ClusterChoice(EMBEDDED)
    if text:
        try:
            kind = address_kind(text)
        except DistmetaError as exc:
            raise DistmetaError(f"engine.address: {exc}") from None
        if kind == JOB_SERVER:
            raise DistmetaError(f"engine.address {text}: {RULE}")
        return ClusterChoice(CLUSTER, text)
    env = environ.get("RAY_ADDRESS", "").strip()
    try:
        kind = address_kind(env)
    except DistmetaError as exc:
        raise DistmetaError(f"RAY_ADDRESS: {exc}") from None
    if kind == JOB_SERVER:
        return ClusterChoice(EMBEDDED, note=(
            f"RAY_ADDRESS={env} is a job-server address (for distmeta submit/jobs); "
            "train starts an embedded Ray (give --address HOST:PORT or auto to join the cluster)"))
    if kind == CLUSTER:
        return ClusterChoice(CLUSTER, env)
    return ClusterChoice(EMBEDDED)


def connect_ray(address: Optional[str], num_cpus: Optional[int] = None) -> bool:
    """Connect to Ray as the address rule says; True when this call started Ray.

    An embedded Ray is ``ray.init(address="local")`` (never a cluster that happens to
    run here); a cluster address other than ``auto`` is probed first.
    """
    import ray

    if ray.is_initialized():
        return False
    choice = resolve_cluster_address(address, os.environ)
    if choice.note:
        print(f"distmeta: {choice.note}", file=sys.stderr)
    kwargs: Dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if choice.mode == EMBEDDED:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
        return True
    if choice.address != "auto":
        probe_address(choice.address.removeprefix("ray://"))
    ray.init(address=choice.address, **kwargs)
    return True
