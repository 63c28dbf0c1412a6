"""The address rule (distmeta/address.py): which addresses are job servers, clusters or
an embedded Ray, and what ``connect_ray`` does with each. No Ray is started here:
``ray.init`` is replaced by a recorder, so each test checks the decision itself."""
from __future__ import annotations

import socket
import time

import pytest

from distmeta import address as addr
from distmeta.address import CLUSTER, EMBEDDED, JOB_SERVER, resolve_cluster_address
from distmeta.errors import DistmetaError


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released when the block ends: nothing listens there


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("address, kind", [
    ("http://127.0.0.1:8265", JOB_SERVER), ("https://ray.example.com", JOB_SERVER),
    ("HTTP://h:1", JOB_SERVER), ("10.0.0.1:6379", CLUSTER), ("ray://head:10001", CLUSTER),
    ("[::1]:6379", CLUSTER), ("auto", CLUSTER), ("local", EMBEDDED), ("", EMBEDDED), (None, EMBEDDED),
])
def test_address_kind(address, kind):
    assert addr.address_kind(address) == kind


@pytest.mark.parametrize("bad, reason", [
    ("http://[::1", "malformed"), ("ray://[::1", "malformed"), ("[::1", "malformed"),
    ("10.0.0.1:notaport", "malformed"), ("10.0.0.1:99999", "malformed"),
    ("head", "names no port"), ("ray://head", "names no port"), ("s3://bucket:1", "unknown scheme"),
])
def test_malformed_addresses_are_one_line(bad, reason):
    with pytest.raises(DistmetaError, match=reason) as exc:
        addr.address_kind(bad)
    assert repr(bad) in one_line(exc)


def test_host_port_defaults_and_ipv6():
    assert addr.host_port("http://h") == ("h", 80)
    assert addr.host_port("https://h/") == ("h", 443)
    assert addr.host_port("ray://h:10001") == ("h", 10001)
    assert addr.host_port("[::1]:6379") == ("::1", 6379)


def test_empty_address_follows_ray_address():
    assert resolve_cluster_address("", {}) == (EMBEDDED, None, "")
    assert resolve_cluster_address(None, {"RAY_ADDRESS": "local"}).mode == EMBEDDED
    for env in ("10.0.0.1:6379", "ray://head:10001", "auto"):
        assert resolve_cluster_address("", {"RAY_ADDRESS": env}) == (CLUSTER, env, "")
    # inside a submitted job Ray sets RAY_ADDRESS to the cluster: the job joins it
    assert resolve_cluster_address(None, {"RAY_ADDRESS": "127.0.0.1:6379",
                                          "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}).mode == CLUSTER


def test_job_server_in_ray_address_means_embedded_with_a_note():
    choice = resolve_cluster_address("", {"RAY_ADDRESS": "http://127.0.0.1:8265"})
    assert choice.mode == EMBEDDED and choice.address is None
    assert "job-server address" in choice.note and "embedded Ray" in choice.note
    assert "\n" not in choice.note


def test_local_and_explicit_addresses_ignore_ray_address():
    env = {"RAY_ADDRESS": "10.0.0.1:6379"}
    assert resolve_cluster_address("local", env).mode == EMBEDDED
    assert resolve_cluster_address(" 10.0.0.2:6379 ", env) == (CLUSTER, "10.0.0.2:6379", "")
    assert resolve_cluster_address("auto", env) == (CLUSTER, "auto", "")


def test_explicit_job_server_address_fails_naming_the_rule():
    with pytest.raises(DistmetaError) as exc:
        resolve_cluster_address("http://127.0.0.1:8265", {})
    line = one_line(exc)
    assert "http://127.0.0.1:8265" in line and "job servers" in line and "HOST:PORT" in line


def test_malformed_ray_address_names_the_variable():
    with pytest.raises(DistmetaError, match=r"^RAY_ADDRESS: .*malformed") as exc:
        resolve_cluster_address("", {"RAY_ADDRESS": "http://[::1"})
    one_line(exc)


def test_probe_is_fast_and_one_line():
    port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(DistmetaError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port} ") as exc:
        addr.probe_address(f"127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 5
    one_line(exc)
    with pytest.raises(DistmetaError, match="cannot reach the Ray job server at http://127.0.0.1"):
        addr.probe(f"http://127.0.0.1:{port}", "the Ray job server", timeout=2)


# --------------------------------------------------------------------------- connect_ray


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` records its keyword arguments instead of starting Ray."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    return calls


def test_connect_ray_local_is_embedded_even_with_ray_address(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    assert addr.connect_ray("local", num_cpus=2) is True
    assert fake_ray[0]["address"] == "local" and fake_ray[0]["num_cpus"] == 2


def test_connect_ray_empty_tries_the_cluster_in_ray_address(fake_ray, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(DistmetaError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        addr.connect_ray("")
    assert fake_ray == []  # probed, never handed to ray.init


def test_connect_ray_empty_with_job_server_ray_address_says_so(fake_ray, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert addr.connect_ray(None) is True
    assert fake_ray[0]["address"] == "local"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distmeta: RAY_ADDRESS=http://127.0.0.1:8265 is a job-server")


def test_connect_ray_refuses_job_server_and_malformed(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(DistmetaError, match="job servers"):
        addr.connect_ray("http://127.0.0.1:8265")
    with pytest.raises(DistmetaError, match=r"^engine\.address: address 'http://\[::1' is malformed"):
        addr.connect_ray("http://[::1")
    assert fake_ray == []


def test_connect_ray_ignores_rays_private_job_variable(fake_ray, monkeypatch):
    """Only RAY_ADDRESS decides; Ray's private job-config variable alone does not."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert addr.connect_ray("") is True
    assert fake_ray[0]["address"] == "local"
