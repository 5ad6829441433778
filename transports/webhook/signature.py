"""Xsolla's webhook signature: ``Authorization: Signature sha1(raw body + secret)``.

It is a plain SHA-1 over the bytes exactly as received with the key appended,
not an HMAC, so the body must never be re-serialized before checking.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from orderfsm.errors import InvalidSignature

_HEADER = re.compile(r"Signature ([0-9a-f]{40})")


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(body: bytes, secret: str | bytes) -> str:
    """The 40 lowercase hex digits Xsolla would send for ``body``."""
    return hashlib.sha1(body + _key(secret)).hexdigest()


def authorization_header(body: bytes, secret: str | bytes) -> str:
    return f"Signature {sign(body, secret)}"


def verify(authorization: str | None, body: bytes, secret: str | bytes) -> None:
    """Raise :class:`InvalidSignature` unless the header signs ``body`` with ``secret``.

    The header must match the reference implementation's anchored pattern
    exactly (one space, lowercase hex); the digests are compared in constant time.
    """
    if authorization is None:
        raise InvalidSignature("missing Authorization header")
    match = _HEADER.fullmatch(authorization)
    if match is None:
        raise InvalidSignature("Authorization header is not 'Signature <40 lowercase hex>'")
    if not hmac.compare_digest(match[1].encode(), sign(body, secret).encode()):
        raise InvalidSignature("signature does not match the body")
