"""Download the files of a registry entry into resources/downloads/<id>/, resumably, and check them.

A download streams into `<file>.part`; a timed-out or dropped transfer is retried with exponential
back-off, resuming from the part's size with an HTTP Range request (on the next attempt or the
next run). A server that cannot be reached at all (unknown host, connection refused, no route) or
that refuses the file (4xx) fails at once, saying where to place the file by hand and how to use a
mirror. The file is renamed to its final name only once complete and checked.

What is checked: every archive's structure (`archive_problem`), when downloaded and when first
found placed by hand; the sha256 against the registry's where the publisher gives one (the whole
hash, or the prefix a publisher's file name carries: `matches`). Every final
file gets a `<file>.sha256` sidecar (sha256sum format) holding its measured hash, which later runs
check the file against.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import lzma
import os
import socket
import ssl
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from vcorr.data.datasets import DataFile, Dataset, dataset
from vcorr.errors import VcorrError
from vcorr.io import apply_umask, atomic_file, sha256_file

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


class _Unavailable(Exception):
    """The server cannot be reached (no such host, refused, no route) or refuses the file: retrying
    cannot help, so the user is told at once how to get the file another way."""


_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


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
    with atomic_file(sidecar(path)) as temporary:
        temporary.write_text(f"{digest}  {path.name}\n")


def _recorded_hash(path: Path) -> str | None:
    recorded = sidecar(path)
    words = recorded.read_text().split() if recorded.is_file() else []
    return words[0].lower() if words else None


def _zip_problem(path: Path, label: str) -> str | None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        return f"not a complete zip archive: no readable central directory ({error}); truncated?"
    with archive:
        for info in tqdm(archive.infolist(), desc=f"check {label}", unit="file", file=sys.stderr):
            try:  # reading a member to its end checks its CRC-32, as ZipFile.testzip does
                with archive.open(info) as member:
                    while member.read(CHUNK_BYTES):
                        pass
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
                return f"member '{info.filename}' is corrupt or unreadable ({error})"
    return None


def _tar_problem(path: Path, label: str) -> str | None:
    try:
        with tarfile.open(path) as archive:
            # Each header carries a checksum; tarfile seeks past every member's data and fails when
            # the file ends inside one, but stops quietly at a cut between members or a bad header.
            for _ in tqdm(archive, desc=f"check {label}", unit="file", file=sys.stderr):
                pass
            stream = archive.fileobj
            stream.seek(archive.offset)
            if stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                return (f"ends after {len(archive.members)} members without the end-of-archive block: "
                        f"truncated, or the header of member {len(archive.members) + 1} is damaged")
            while stream.read(CHUNK_BYTES):  # a compressed stream checks its own CRC at its end
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        return f"not a complete tar archive ({error})"
    return None


def archive_problem(path: Path, name: str | None = None) -> str | None:
    """What is structurally wrong with the zip or tar at `path` (named `name`), or None.

    zip: the central directory, then every member read through its CRC-32. tar (any compression):
    every member header and its checksum, that no member's data runs past the end of the file, and
    the end-of-archive block that a truncated copy lacks; a compressed tar is read to its end so that
    its own check (gzip CRC-32, ...) runs. The data of an uncompressed tar's members has no checksum:
    only a sha256 covers it.
    """
    name = name or path.name
    if name.endswith(".zip") or zipfile.is_zipfile(path):
        return _zip_problem(path, name)
    return _tar_problem(path, name)


def matches(digest: str, expected: str) -> bool:
    """Whether a measured sha256 is the expected one, or begins with the expected prefix."""
    return digest.startswith(expected.lower())


def _registry_hash(expected: str) -> str:
    return "the registry's sha256" + (" prefix" if len(expected) < len(hashlib.sha256().hexdigest()) else "")


def verify(path: Path, expected: str | None, archive: bool = False) -> str:
    """Hash `path` and check it against the registry's hash, else against its recorded sidecar.

    An archive whose hash is not recorded yet (placed by hand) is structure-checked first
    (`archive_problem`); one matching its recorded hash is the very file that passed that check.
    Then the measured hash is recorded. Returns the hash; raises VcorrError naming the file.
    """
    digest = sha256_file(path)
    recorded = _recorded_hash(path)
    if expected:
        source = f"{_registry_hash(expected)} (config/datasets.yaml)"
    elif recorded:
        expected, source = recorded, f"the hash recorded in {sidecar(path)}"
    if expected and not matches(digest, expected):
        raise VcorrError(
            f"{path}: sha256 {digest} does not match {source} {expected}: the file is corrupt or "
            f"another version; delete it (and {sidecar(path).name}) and fetch it again"
        )
    if digest != recorded:
        problem = archive_problem(path) if archive else None
        if problem:
            raise VcorrError(
                f"{path}: refused, {problem}: the archive is corrupt or incomplete (a cut download or "
                "copy?); replace it with a complete copy, or delete it and run `vcorr data fetch` again"
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
        raise _Unavailable(f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, (socket.gaierror, ssl.SSLCertVerificationError)) or (
            isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS
        ):
            raise _Unavailable(f"cannot reach the server ({reason})") from None
        raise _Retryable(str(reason)) from None


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


def _cannot_download(url: str, target: Path, what: str) -> VcorrError:
    """The error for a download given up: what happened, the part kept (if any), the ways around."""
    part = target.with_name(target.name + ".part")
    kept = (f" {part} ({part.stat().st_size} bytes) is kept and the next `vcorr data fetch` resumes it."
            if part.is_file() else "")
    return VcorrError(
        f"{url}: {what}.{kept} Without access to this server, download the file elsewhere and place it "
        f"at {target} (the next `vcorr data fetch` checks it and uses it), or fetch from a mirror serving "
        f"the same paths: `vcorr data fetch --mirror scheme://host[:port][/prefix]` or {MIRROR_ENV}=..."
    )


def download(url: str, target: Path, sha256: str | None, policy: RetryPolicy, archive: bool = False) -> str:
    """Download `url` to `target` (resuming `<target>.part`), check it, rename it; its hash.

    Transient failures are retried `policy.attempts` times; an unreachable server or a refused file
    fails at once. The sha256 (when given) and, for an archive, its structure are checked before
    the rename; a file failing them is deleted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(1, policy.attempts + 1):
        try:
            _download_once(url, part, policy.timeout_s, target.name)
            break
        except _Unavailable as error:
            raise _cannot_download(url, target, str(error)) from None
        except _Retryable as error:
            if attempt == policy.attempts:
                raise _cannot_download(url, target, f"download failed after {attempt} attempts ({error})") from None
            delay = policy.delay(attempt)
            print(f"{target.name}: {error}; retrying in {delay:.1f} s (attempt {attempt + 1}/{policy.attempts})",
                  file=sys.stderr)
            time.sleep(delay)
    digest = sha256_file(part)
    if sha256 and not matches(digest, sha256):
        part.unlink()
        raise _cannot_download(url, target, f"the downloaded file has sha256 {digest}, expected {_registry_hash(sha256)} {sha256} "
                                            "(config/datasets.yaml): refused and deleted, the server or mirror "
                                            "serves a corrupt or different file")
    problem = archive_problem(part, target.name) if archive else None
    if problem:
        part.unlink()
        raise _cannot_download(url, target, f"the downloaded archive is refused and deleted: {problem}")
    apply_umask(part)
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
    """Make resources/downloads/<id>/ hold every required file of `dataset_id`, checked.

    Files already there (downloaded earlier or placed by hand) are checked (`verify`) and kept. Manual-only
    sets raise a VcorrError saying where to download the files and where to put them.
    """
    entry = dataset(dataset_id)
    if entry.built_by:
        print(f"{dataset_id} is built by `vcorr data extract {dataset_id}` ({entry.built_by}): nothing to download",
              file=sys.stderr)
        return []
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
            verify(target, item.expected_sha256, archive=item.type == "archive")
        elif entry.manual or not item.url:
            if item.required:
                absent.append(item)
            continue
        else:
            try:
                download(with_mirror(item.url, mirror), target, item.expected_sha256, policy, archive=item.type == "archive")
            except VcorrError as error:
                if item.required:
                    raise
                print(f"{dataset_id}: optional {item.name} not fetched: {error}", file=sys.stderr)
                continue
        fetched.append(target)
    if absent:
        raise VcorrError(entry.where_to_get(Path(downloads)))
    return fetched
