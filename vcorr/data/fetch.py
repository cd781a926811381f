"""Download the files of a registry entry into resources/downloads/<id>/, resumably and verified.

A download streams into `<file>.part`; an interrupted transfer is resumed from the part's size
with an HTTP Range request on the next attempt (or the next run), attempts are retried with
exponential back-off, and the file is renamed to its final name only once complete and verified.
Every final file gets a `<file>.sha256` sidecar (sha256sum format): the registry's hash when it
has one, otherwise the measured hash, which later runs then check the file against.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from vcorr.data.datasets import DataFile, Dataset, dataset
from vcorr.errors import VcorrError
from vcorr.io import sha256_file

CHUNK_BYTES = 1 << 20
MIRROR_ENV = "VCORR_MIRROR"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff_s: float = 2.0  # wait before the 2nd attempt; doubled each time, capped below
    max_backoff_s: float = 120.0
    timeout_s: float = 60.0  # socket timeout: a stalled connection counts as a failed attempt

    def delay(self, failed_attempts: int) -> float:
        return min(self.backoff_s * 2 ** (failed_attempts - 1), self.max_backoff_s)


class _Retryable(Exception):
    """A transient failure (dropped connection, timeout, 5xx): try again, resuming."""


def with_mirror(url: str, mirror: str | None) -> str:
    """`url` with its scheme and host replaced by the mirror's (whose path, if any, is a prefix)."""
    if not mirror:
        return url
    base = urlsplit(mirror)
    if not base.scheme or not base.netloc:
        raise VcorrError(f"mirror '{mirror}': expected scheme://host[:port][/prefix]")
    original = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, ""))


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    sidecar(path).write_text(f"{digest}  {path.name}\n")


def verify(path: Path, expected: str | None) -> str:
    """Hash `path` and check it against the registry's hash, else against its recorded sidecar.

    With neither, the measured hash is recorded. Returns the hash; raises VcorrError on mismatch.
    """
    digest = sha256_file(path)
    recorded = sidecar(path)
    if expected:
        source = "the registry's sha256 (config/datasets.yaml)"
    elif recorded.is_file():
        expected, source = recorded.read_text().split()[0], f"the hash recorded in {recorded}"
    if expected and digest != expected.lower():
        raise VcorrError(
            f"{path}: sha256 {digest} does not match {source} {expected}: the file is corrupt or "
            f"another version; delete it (and {recorded.name}) and fetch it again"
        )
    _write_sidecar(path, digest)
    return digest


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse | None:
    """The response for the bytes from `offset` on, or None when the part is already complete."""
    headers = {"User-Agent": "vcorr"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left past `offset`: complete if the server's total is exactly the part's size.
            content_range = error.headers.get("Content-Range", "")
            if content_range.endswith(f"/{offset}"):
                return None
            raise _Retryable(f"range request refused ({content_range or 'no Content-Range'})") from None
        if error.code in (408, 429) or error.code >= 500:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        raise VcorrError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise _Retryable(str(getattr(error, "reason", error))) from None


def _download_once(url: str, part: Path, timeout_s: float, label: str) -> None:
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout_s)
    if response is None:
        return
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise _Retryable(f"server answered range {response.headers.get('Content-Range')!r}")
        if not resumed:
            offset = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr
        ) as progress:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as error:
                    raise _Retryable(f"connection lost ({error!r})") from None
                if not chunk:
                    break
                out.write(chunk)
                progress.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retryable(f"connection closed after {size} of {total} bytes")


def download(url: str, target: Path, sha256: str | None, policy: RetryPolicy) -> str:
    """Download `url` to `target` (resuming `<target>.part`), verify it, rename it; its hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(1, policy.attempts + 1):
        try:
            _download_once(url, part, policy.timeout_s, target.name)
            break
        except _Retryable as error:
            if attempt == policy.attempts:
                raise VcorrError(
                    f"{url}: download failed after {attempt} attempts ({error}); "
                    f"{part} is kept and the next `vcorr data fetch` resumes it"
                ) from None
            delay = policy.delay(attempt)
            print(f"{target.name}: {error}; retrying in {delay:.1f} s (attempt {attempt + 1}/{policy.attempts})",
                  file=sys.stderr)
            time.sleep(delay)
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise VcorrError(
            f"{url}: downloaded file has sha256 {digest}, expected {sha256} (config/datasets.yaml): "
            "refused and deleted; the server or mirror serves a corrupt or different file"
        )
    os.replace(part, target)
    _write_sidecar(target, digest)
    return digest


def stands_in_for_a_present_file(item: DataFile, folder: Path) -> bool:
    """An alternative (e.g. JHMDB's videos) whose preferred file is in `folder`: not used."""
    return bool(item.alternative_to) and (folder / item.alternative_to).is_file()


def files_to_use(entry: Dataset, folder: Path) -> list[DataFile]:
    """The entry's files minus those standing in for an alternative that is present."""
    return [item for item in entry.files if not stands_in_for_a_present_file(item, folder)]


def fetch(dataset_id: str, downloads: Path, mirror: str | None = None, policy: RetryPolicy = RetryPolicy()) -> list[Path]:
    """Make resources/downloads/<id>/ hold every required file of `dataset_id`, verified.

    Files already there (downloaded earlier or placed by hand) are verified and kept. Manual-only
    sets raise a VcorrError saying where to download the files and where to put them.
    """
    entry = dataset(dataset_id)
    if entry.derived_from:
        print(f"{dataset_id} is derived from {entry.derived_from}: fetching {entry.derived_from}", file=sys.stderr)
        return fetch(entry.derived_from, downloads, mirror, policy)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    folder = Path(downloads) / entry.id
    fetched, absent = [], []
    for item in entry.files:
        if stands_in_for_a_present_file(item, folder):
            continue  # the file it stands in for is here (placed, or fetched above: files go in order)
        target = folder / item.name
        if target.is_file():
            verify(target, item.sha256)
        elif entry.manual or not item.url:
            if item.required:
                absent.append(item)
            continue
        else:
            try:
                download(with_mirror(item.url, mirror), target, item.sha256, policy)
            except VcorrError as error:
                if item.required:
                    raise
                print(f"{dataset_id}: optional {item.name} not fetched: {error}", file=sys.stderr)
                continue
        fetched.append(target)
    if absent:
        raise VcorrError(entry.where_to_get(Path(downloads)))
    return fetched
