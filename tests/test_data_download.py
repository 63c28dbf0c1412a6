"""Downloading the official zips, against a local HTTP server on 127.0.0.1 only."""
from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading

import pytest

from data_fixtures import omniglot_zip
from distmeta.data import DataError
from distmeta.data.download import (DEFAULT_BASE_URL, OMNIGLOT_MD5, fetch_omniglot, md5sum,
                                    resolve_base_url)
from distmeta.data.omniglot import load_set

STEM = "images_background_small1"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of a thread serving ``folder`` on 127.0.0.1."""
    servers = []

    def start(folder):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(_QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def nothing_shipped(tmp_path, monkeypatch):
    """As on an install without the shipped minimal sets: the reader must download them."""
    import distmeta.data.omniglot as omniglot

    monkeypatch.setattr(omniglot, "SHIPPED", tmp_path / "not-shipped")


def test_download_verifies_md5_and_feeds_the_reader(tmp_path, serve, nothing_shipped):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(omniglot_zip("background_small1"), site / f"{STEM}.zip")
    base = serve(site)
    dest = tmp_path / "data"
    path = fetch_omniglot(STEM, dest, base_url=base)
    assert path == dest / f"{STEM}.zip" and md5sum(path) == OMNIGLOT_MD5[STEM]
    assert leftovers(dest) == [f"{STEM}.zip"]
    # the reader downloads on its own when the zip is missing and download is on
    fresh = tmp_path / "fresh"
    ds = load_set("background_small1", fresh, download=True, base_url=base)
    assert ds.num_classes == 136 and leftovers(fresh) == [f"{STEM}.zip"]


def test_md5_mismatch_leaves_nothing(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    data = bytearray(omniglot_zip("background_small1").read_bytes())
    data[1000:1010] = b"corrupted!"
    (site / f"{STEM}.zip").write_bytes(bytes(data))
    dest = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        fetch_omniglot(STEM, dest, base_url=serve(site))
    text = str(exc.value)
    assert "MD5" in text and OMNIGLOT_MD5[STEM] in text and "\n" not in text
    assert leftovers(dest) == []


def test_missing_file_on_server(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(DataError) as exc:
        fetch_omniglot(STEM, tmp_path / "data", base_url=serve(site))
    assert "404" in str(exc.value) and leftovers(tmp_path / "data") == []


def test_unreachable_server_says_what_to_put_where(tmp_path, nothing_shipped):
    with socket.socket() as sock:  # reserve then release a port: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        load_set("background_small1", dest, download=True, base_url=f"http://127.0.0.1:{port}")
    text = str(exc.value)
    assert "\n" not in text and f"{STEM}.zip" in text and str(dest) in text
    assert leftovers(dest) == []


def test_base_url_resolution(monkeypatch):
    monkeypatch.delenv("DISTMETA_OMNIGLOT_URL", raising=False)
    assert resolve_base_url() == DEFAULT_BASE_URL
    monkeypatch.setenv("DISTMETA_OMNIGLOT_URL", "http://127.0.0.1:1/mirror/")
    assert resolve_base_url() == "http://127.0.0.1:1/mirror"
    assert resolve_base_url("http://127.0.0.1:2") == "http://127.0.0.1:2"
    with pytest.raises(DataError):
        fetch_omniglot("images_nonsense", "/nonexistent")
