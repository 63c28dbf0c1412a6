"""Where distmeta finds Ray: one probe and one connect for every command.

The address rule (the docs' "Addresses" section): an ``http(s)://`` address is a
job server (``distmeta submit``, ``distmeta jobs``); ``HOST:PORT``, ``ray://HOST:PORT``
and ``auto`` name a running cluster for ``train`` and ``tune``; an empty address
or ``local`` starts an embedded Ray for this process alone.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional

from distmeta.errors import DistmetaError


def probe_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds when ``HOST:PORT`` does not accept TCP connections
    (``ray.init`` on a dead address can hang for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistmetaError(f"engine.address: {address!r} is not 'auto', 'HOST:PORT' or empty")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise DistmetaError(f"engine.address: cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from None


def connect_ray(address: Optional[str], num_cpus: Optional[int] = None) -> bool:
    """Connect to Ray as ``engine.address`` says; return True when this call started Ray.

    Empty address: an embedded local Ray (``address="local"``, never a cluster that
    happens to run here), except inside a submitted Ray job, where it means the
    job's cluster. ``auto`` joins the running cluster; ``HOST:PORT`` is probed first.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if not address:
        if in_job:
            ray.init(**kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
        return True
    if address != "auto":
        probe_address(address[len("ray://"):] if address.startswith("ray://") else address)
    ray.init(address=address, **kwargs)
    return True
