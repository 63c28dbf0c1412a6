"""Fetching the official Omniglot zips.

Contract: ``fetch_omniglot(stem, root, base_url)`` downloads ``<base_url>/<stem>.zip``
into ``root`` through a temporary file beside it, checks the MD5 and renames it into
place atomically: the final path either holds a verified file or does not exist, and
no temporary file is left behind. Network failures and checksum mismatches raise a
one-line ``DataError``; the network one says which file to put in which folder.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from distmeta.errors import DataError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
BASE_URL_ENV = "DISTMETA_OMNIGLOT_URL"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
_CHUNK = 1 << 20


def resolve_base_url(base_url: Optional[str] = None) -> str:
    """``base_url`` if given, else ``$DISTMETA_OMNIGLOT_URL``, else the official repository."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def md5sum(path: Union[str, Path]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Union[str, Path], md5: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` (atomic rename after an optional MD5 check)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{url}: MD5 {digest.hexdigest()} differs from the expected {md5}; "
                            f"nothing was saved (corrupt download or wrong base URL)")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {url} ({reason}); without network, fetch {dest.name} "
                        f"elsewhere and put it in {dest.parent}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_omniglot(stem: str, root: Union[str, Path], base_url: Optional[str] = None,
                   timeout: float = 60.0) -> Path:
    """Download the official ``<stem>.zip`` (e.g. ``images_background``) into ``root``."""
    if stem not in OMNIGLOT_MD5:
        raise DataError(f"no official Omniglot file {stem}.zip; known: {', '.join(OMNIGLOT_MD5)}")
    url = f"{resolve_base_url(base_url)}/{stem}.zip"
    return download(url, Path(root) / f"{stem}.zip", md5=OMNIGLOT_MD5[stem], timeout=timeout)
