"""OCI image layouts on disk: reading verified blobs, writing blobs and naming manifests.

A layout is a directory with ``oci-layout``, ``index.json`` and ``blobs/sha256/``. Every blob read
through here is checked against its digest; every blob written is hashed while it is written and
lands under its digest name only when complete (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from trusthook.common.digest import digest_string, sha256_of
from trusthook.common.files import commit, create_temp, write_atomic
from trusthook.errors import ImageError
from trusthook.image.model import (
    MANIFEST_TYPE,
    REF_NAME,
    Descriptor,
    IndexEntry,
    Manifest,
    check_digest,
    parse_index,
)

LAYOUT_FILE = '{"imageLayoutVersion":"1.0.0"}'
MAX_METADATA = 4 << 20  # manifests and configs are small; a bigger one is refused, not read
CHUNK = 1 << 20


def parse_reference(text: str) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:REF`` (as skopeo's ``oci:DIR:REF`` without ``oci:``)."""
    text = text.removeprefix("oci:")
    path, sep, ref = text.rpartition(":")
    if sep and path and "/" not in ref:
        return Path(path), ref or None
    return Path(text), None


@dataclass(frozen=True)
class Layout:
    """An OCI image layout directory."""

    path: Path

    @classmethod
    def open(cls, path: Path) -> Layout:
        """An existing layout; an ImageError if ``path`` is not one."""
        try:
            marker = json.loads((path / "oci-layout").read_bytes())
        except FileNotFoundError:
            raise ImageError(f"{path} is not an OCI image layout (no oci-layout file)") from None
        except (OSError, ValueError) as e:
            raise ImageError(f"{path}/oci-layout cannot be read: {e}") from None
        if not isinstance(marker, dict) or marker.get("imageLayoutVersion") != "1.0.0":
            raise ImageError(f"{path}/oci-layout: imageLayoutVersion must be 1.0.0")
        return cls(path)

    @classmethod
    def open_or_create(cls, path: Path) -> Layout:
        """The layout at ``path``, created empty if the directory does not exist or is empty."""
        if path.exists() and any(path.iterdir()):
            return cls.open(path)
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        write_atomic(path / "oci-layout", LAYOUT_FILE.encode())
        write_atomic(path / "index.json", b'{"schemaVersion":2,"manifests":[]}')
        return cls(path)

    def entries(self) -> tuple[IndexEntry, ...]:
        """The manifests index.json names."""
        try:
            data = (self.path / "index.json").read_bytes()
        except OSError as e:
            raise ImageError(f"{self.path}/index.json cannot be read: {e}") from None
        return parse_index(data)

    def resolve(self, ref: str | None) -> Descriptor:
        """The manifest descriptor named ``ref``, or the only one when ``ref`` is None."""
        entries = self.entries()
        if ref is None:
            if len(entries) != 1:
                names = sorted(e.ref or e.descriptor.digest for e in entries)
                raise ImageError(
                    f"{self.path} holds {len(entries)} images; name one as {self.path}:REF "
                    f"(refs: {', '.join(names) or 'none'})"
                )
            found = entries[0].descriptor
        else:
            matches = [e.descriptor for e in entries if e.ref == ref]
            if not matches:
                raise ImageError(f"{self.path} has no image named {ref!r}")
            found = matches[-1]
        if found.media_type != MANIFEST_TYPE:
            raise ImageError(
                f"{self.path}:{ref or ''} is a {found.media_type}, expected an OCI image manifest"
            )
        return found

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (it may not exist)."""
        return self.path / "blobs" / "sha256" / check_digest(digest, "blob").removeprefix("sha256:")

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob (manifest, config), checked against the descriptor's size and digest."""
        if desc.size > MAX_METADATA:
            raise ImageError(f"blob {desc.digest}: {desc.size} bytes is too large for metadata")
        try:
            with self.blob_path(desc.digest).open("rb") as f:
                data = f.read(desc.size + 1)
        except FileNotFoundError:
            raise ImageError(f"{self.path}: blob {desc.digest} is missing") from None
        except OSError as e:
            raise ImageError(f"{self.path}: blob {desc.digest} cannot be read: {e}") from None
        check_blob(desc, len(data), sha256_of(data))
        return data

    def manifest(self, ref: str | None) -> tuple[Descriptor, Manifest]:
        """The manifest named ``ref`` (see ``resolve``), verified and parsed."""
        desc = self.resolve(ref)
        return desc, Manifest.parse(self.read_blob(desc))

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[IO[bytes]]:
        """A large blob opened for streaming; the caller checks the digest as it reads."""
        try:
            f = self.blob_path(desc.digest).open("rb")
        except FileNotFoundError:
            raise ImageError(f"{self.path}: blob {desc.digest} is missing") from None
        except OSError as e:
            raise ImageError(f"{self.path}: blob {desc.digest} cannot be read: {e}") from None
        with f:
            yield f

    def verify_blob(self, desc: Descriptor) -> None:
        """Read a whole blob and check its size and digest."""
        hasher = hashlib.sha256()
        size = 0
        with self.open_blob(desc) as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        check_blob(desc, size, digest_string(hasher.digest()))

    def write_blob(self, data: bytes) -> str:
        """Store ``data`` as a blob; its digest."""
        with self.blob_writer() as w:
            w.write(data)
        return w.digest

    def blob_writer(self) -> BlobWriter:
        """A writer that stores a blob under its digest when closed without an error."""
        return BlobWriter(self.path / "blobs" / "sha256")

    def copy_blob(self, source: Layout, desc: Descriptor) -> bool:
        """Copy one blob from ``source`` into this layout, verifying it on the way; whether
        it was new here."""
        if self.blob_path(desc.digest).exists():
            return False
        with source.open_blob(desc) as f, self.blob_writer() as w:
            while chunk := f.read(CHUNK):
                w.write(chunk)
            # The writer's rename happens on exit; check before it.
            check_blob(desc, w.size, w.current_digest())
        return w.created

    def add_manifest(self, manifest: dict[str, Any], ref: str | None) -> Descriptor:
        """Store ``manifest`` and name it ``ref`` in index.json (replacing that name)."""
        data = json.dumps(manifest, separators=(",", ":")).encode()
        digest = self.write_blob(data)
        entry: dict[str, Any] = {"mediaType": MANIFEST_TYPE, "digest": digest, "size": len(data)}
        if ref is not None:
            entry["annotations"] = {REF_NAME: ref}
        kept = [dict(e.descriptor.raw) for e in self.entries() if ref is None or e.ref != ref]
        index = {"schemaVersion": 2, "manifests": [*kept, entry]}
        write_atomic(self.path / "index.json", json.dumps(index, separators=(",", ":")).encode())
        return Descriptor.parse(entry, "new manifest")


@contextlib.contextmanager
def output_layout(path: Path) -> Iterator[Layout]:
    """``Layout.open_or_create(path)`` for a command writing an image into it. If the body
    fails and the layout was new, the files that made it a layout are removed again, and the
    directory too unless it existed (empty) before; the body removes the blobs it added."""
    existed = path.exists()
    new = not existed or not any(path.iterdir())
    layout = Layout.open_or_create(path)
    try:
        yield layout
    except BaseException:
        if new:
            with contextlib.suppress(OSError):  # not empty after all: leave what is there
                (path / "oci-layout").unlink()
                (path / "index.json").unlink()
                (path / "blobs" / "sha256").rmdir()
                (path / "blobs").rmdir()
                if not existed:
                    path.rmdir()
        raise


def check_blob(desc: Descriptor, size: int, digest: str) -> None:
    """An ImageError unless a blob's size and digest are the descriptor's."""
    if size != desc.size:
        raise ImageError(f"blob {desc.digest}: size is {size}, the descriptor says {desc.size}")
    if digest != desc.digest:
        raise ImageError(f"blob {desc.digest}: content digest is {digest} (tampered or corrupt)")


class BlobWriter:
    """Hash while writing into a temporary file; on a clean exit rename it to its digest."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        fd, self._tmp = create_temp(directory, "blob")
        self._file = os.fdopen(fd, "wb", closefd=False)
        self._fd = fd
        self._hasher = hashlib.sha256()
        self.size = 0
        self.digest = ""
        self.created = False  # the blob was not there before

    def write(self, data: bytes) -> None:
        """Append ``data`` to the blob."""
        self._file.write(data)
        self._hasher.update(data)
        self.size += len(data)

    def current_digest(self) -> str:
        """The digest of what was written so far."""
        return digest_string(self._hasher.digest())

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._file.close()  # flushes; the descriptor stays open for commit
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()
            return
        self.digest = self.current_digest()
        final = self._dir / self.digest.removeprefix("sha256:")
        self.created = not final.exists()
        commit(self._fd, self._tmp, final)

    def _discard(self) -> None:
        os.close(self._fd)
        self._tmp.unlink(missing_ok=True)
