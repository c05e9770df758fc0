"""Signed checkpoints of the audit trail's heads (Ed25519): what a hash chain alone cannot prove.

An unkeyed chain shows edits inside it, not a tail cut off its end nor the whole trail rewritten with the same
hashing. A checkpoint is the router's signature over every chain's newest (writer, seq, hash, time), made with a
key that is never in the trail (`$SOVRA_HOME/keys/audit-ed25519.pem`, 0600, on the router's node). An auditor keeps
checkpoints elsewhere (`sovra audit checkpoint -o FILE`); later, `sovra audit verify --checkpoint FILE` fails when
the trail no longer holds each signed record at its seq with its hash.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sovra.core.errors import SovraError
from sovra.orchestrator.router.audit_chain import FILE_MODE, Head, canonical, private_dir

FORMAT = "sovra-audit-checkpoint/1"
KEY_FILE = "audit-ed25519.pem"

class CheckpointError(SovraError):
    """A checkpoint that cannot be trusted or read; the message says why."""

class Signer:
    """The router's checkpoint key. Made on first use (exclusively: two replicas starting together agree on one)."""

    def __init__(self, directory: Path):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private_dir(directory)
        path = directory / KEY_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                pass  # another replica made it first: use theirs
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
        os.chmod(path, FILE_MODE)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"{path} does not hold an Ed25519 private key")
        self._key = key
        self.public_key = public_key_text(key.public_key())

    def sign(self, heads: Sequence[Head], *, time: str) -> dict[str, Any]:
        """A checkpoint of `heads`, signed."""
        body = {"format": FORMAT, "time": time, "public_key": self.public_key,
                "heads": [h.to_json() for h in sorted(heads, key=lambda h: h.writer)]}
        return {**body, "signature": base64.b64encode(self._key.sign(canonical(body))).decode()}

def existing_public_key(directory: Path) -> str | None:
    """The public key of the checkpoint key in `directory`, if one was made there (never makes one)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    return public_key_text(key.public_key())


def public_key_text(public: Any) -> str:
    """`ed25519:<base64 of the raw 32 bytes>`: short enough to read aloud, compare and pin."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()

def fingerprint(public_key: str) -> str:
    """A short form for people (`sovra status`): sha256 of the key text, 16 hex digits in groups of four."""
    digest = hashlib.sha256(public_key.encode()).hexdigest()[:16]
    return ":".join(digest[i:i + 4] for i in range(0, 16, 4))

def check(checkpoint: Mapping[str, Any], *, public_key: str | None = None) -> dict[str, Head]:
    """The heads of a checkpoint whose signature holds, by writer; `public_key` (when given) must have signed it.

    Raises `CheckpointError` for anything else: a checkpoint signed by another key proves nothing about this trail.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"not a Sovra audit checkpoint (expected format {FORMAT!r})")
    key_text, signature = checkpoint.get("public_key"), checkpoint.get("signature")
    if not isinstance(key_text, str) or not key_text.startswith("ed25519:") or not isinstance(signature, str):
        raise CheckpointError("the checkpoint carries no Ed25519 public key or signature")
    if public_key is not None and key_text != public_key:
        raise CheckpointError(f"the checkpoint was signed by key {fingerprint(key_text)}, not by this trail's router "
                              f"({fingerprint(public_key)})")
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_text[8:], validate=True))
        public.verify(base64.b64decode(signature, validate=True), canonical(body))
    except (InvalidSignature, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's signature does not hold ({type(exc).__name__}): it was altered"
                              ) from None
    heads = checkpoint.get("heads")
    if not isinstance(heads, list):
        raise CheckpointError("the checkpoint lists no heads")
    try:
        parsed = [Head.of(h) for h in heads]
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return {h.writer: h for h in parsed}

def load(path: Path, *, public_key: str | None = None) -> dict[str, Head]:
    """`check` of a checkpoint file."""
    import json

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except ValueError:
        raise CheckpointError(f"{path} is not JSON: not a checkpoint written by `sovra audit checkpoint`") from None
    return check(data, public_key=public_key)
