"""A task's files: found, downloaded and checked against their hashes, read as text, and what
is built from them (token arrays) cached on disk, keyed by the files' bytes. What data/task.py's
tasks stand on; a learner may skip it.

- read_text: a data file's text, with the file (and line) named when it cannot be read;
- fetch: what a task's folder lacks, downloaded (plumbing/checkpoint.py's resumable downloader)
  and checked against its published hash (mend: what to say of a damaged file);
- cached: arrays built once per content of the source files, written whole, then renamed.
"""

import contextlib
import hashlib
import os
import zipfile

import numpy as np

from plumbing.errors import UserError


class DataError(UserError):
    """A problem with the data files, naming the file (and row or line) and what to do."""


def read_text(path: str) -> str:
    """A data file's text (UTF-8, a byte-order mark dropped); a DataError naming the file, and
    the line of a byte that is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 (byte 0x{data[e.start]:02x} on line {line})") from None


def content_hash(data: bytes, kind: str) -> str:
    """sha256 of the bytes, or (kind "git") the id git gives them as a blob: a hash a file's own
    repository history tells, where no SHA-256 was ever published."""
    if kind == "git":
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def mend(path: str, downloads: str) -> str:
    """How to mend a damaged data file: one of our downloads (in the task's own folder) is
    fetched again once deleted; a file of the user's folder is theirs to replace."""
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(downloads):
        return "delete it, and the next run downloads it again"
    return "replace it with a good copy (nothing is downloaded into a folder you give)"


def fetch(folder: str, files: dict, hint: str):
    """Download what folder lacks of files (name -> (url, hash kind, hash)), each checked against
    its hash (a wrong one is deleted again). hint: what to pass instead, offline."""
    from plumbing.checkpoint import download  # the resumable downloader the checkpoints use

    for name, (url, kind, digest) in files.items():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            continue
        try:
            download(url, path, hint=hint)
        except RuntimeError as e:  # (DownloadError)
            raise DataError(str(e)) from None
        with open(path, "rb") as f:
            got = content_hash(f.read(), kind)
        if got != digest:
            os.remove(path)
            raise DataError(f"{name} from {url} is not the file expected (its {kind} hash is "
                            f"{got}, not {digest}); deleted it, run again")


def cached(name: str, sources: list[str], layout: str, build, folder: str | None = None) -> dict:
    """The arrays build() makes from the source files, built once: kept in FOLDER/NAME-KEY.npz,
    KEY a hash of the files' bytes and of the layout (what build makes of them), so an edited
    file, or another layout, is built afresh and a cache is never used for another source. The
    file is written whole under a name of its own, then renamed: two processes building the same
    cache end with one good copy. folder: default the user's cache, $GPT2_CACHE_DIR/tokens (else
    ~/.cache/lora-gpt2/tokens); one that cannot be written costs the cache, not the run."""
    if folder is None:
        from plumbing.checkpoint import cache_dir
        folder = os.path.join(cache_dir(), "tokens")
    digest = hashlib.sha256(layout.encode())
    for path in sources:
        digest.update(f"\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:  # (in 64 kB reads: reads of megabytes raise glibc's mmap
            for chunk in iter(lambda: f.read(1 << 16), b""):  # threshold, and the build's
                digest.update(chunk)  # blocks then stay in its heap: 150 MB more at the peak)
    path = os.path.join(folder, f"{name}-{digest.hexdigest()[:20]}.npz")
    try:
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # none yet, or a damaged one
        pass
    arrays = build()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache folder: this run goes on without the cache
        with contextlib.suppress(OSError):
            os.remove(tmp)
    return arrays
