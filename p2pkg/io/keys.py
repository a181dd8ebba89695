"""Ed25519 key files: PKCS#8 PEM, mode 0600, never overwritten silently."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.root import public_bytes
from p2pkg.errors import KeyFileError

MAX_KEY_FILE = 16 * 1024


def generate_key_file(path: Path, *, force: bool = False) -> bytes:
    """Write a new private key to ``path`` (0600) and return its public key bytes.

    The key is written to a temp file in the same directory and linked into
    place, so ``path`` either does not exist or holds a complete key; without
    ``force`` an existing file is an error, never overwritten.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".p2pkg-key-")
    except OSError as exc:
        raise KeyFileError(f"cannot write key to {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
        os.close(fd)
        if force:
            Path(tmp).replace(path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(f"{path} exists; refusing to overwrite (use --force)") from None
            finally:
                Path(tmp).unlink()
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise KeyFileError(f"cannot write key to {path}: {exc.strerror}") from None
    return public_bytes(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key written by :func:`generate_key_file`."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is too large to be a key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key
