"""Xsolla's webhook signature: the reference vectors and a property over any change."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support_webhook import SECRET, VECTORS

from orderfsm.errors import InvalidSignature
from transports.webhook import (
    authorization_header,
    sign,
    verify,
)


@pytest.mark.parametrize(("body", "digest"), VECTORS)
def test_signature_vectors_from_the_reference(body: bytes, digest: str) -> None:
    assert sign(body, SECRET) == digest
    verify(f"Signature {digest}", body, SECRET)
    verify(f"Signature {digest}", body, SECRET.encode())


def test_the_php_sdk_invalid_signature_is_rejected() -> None:
    with pytest.raises(InvalidSignature):
        verify("Signature 78143a5ac4b892a68ce8b0b8b49e26667db0fa00", b"", SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Signature",
        "Signature 7A26AC37AF1C6225A34C3657C4B56E7C16CFE651",  # uppercase
        "signature 7a26ac37af1c6225a34c3657c4b56e7c16cfe651",
        "Signature  7a26ac37af1c6225a34c3657c4b56e7c16cfe651",
        "Signature 7a26ac37af1c6225a34c3657c4b56e7c16cfe651 ",
        "Signature 7a26ac37af1c6225a34c3657c4b56e7c16cfe651\n",
        "Bearer 7a26ac37af1c6225a34c3657c4b56e7c16cfe651",
        "Signature 7a26ac37af1c6225a34c3657c4b56e7c16cfe6",
    ],
)
def test_only_the_exact_header_format_is_accepted(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify(header, b'{"notification_type": "order_paid"}', SECRET)


@given(
    body=st.binary(max_size=300),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
    insert=st.binary(min_size=1, max_size=5),
    how=st.sampled_from(["flip", "insert", "truncate", "signature"]),
)
def test_any_change_to_a_signed_body_or_its_signature_is_rejected(
    body: bytes, position: int, flip: int, insert: bytes, how: str
) -> None:
    """A signature verifies its own body and nothing else."""
    digest = sign(body, SECRET)
    verify(f"Signature {digest}", body, SECRET)
    if how == "signature":
        i = position % 40
        changed = "0123456789abcdef"[(int(digest[i], 16) + flip) % 16]
        if changed == digest[i]:
            changed = "0123456789abcdef"[(int(digest[i], 16) + 1) % 16]
        header = f"Signature {digest[:i]}{changed}{digest[i + 1 :]}"
        tampered = body
    else:
        header = f"Signature {digest}"
        if how == "flip" and body:
            i = position % len(body)
            tampered = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
        elif how == "truncate" and body:
            tampered = body[: position % len(body)]
        else:
            i = position % (len(body) + 1)
            tampered = body[:i] + insert + body[i:]
    assert tampered != body or header != f"Signature {digest}"
    with pytest.raises(InvalidSignature):
        verify(header, tampered, SECRET)


@given(body=st.binary(max_size=200), other=st.text(min_size=1, max_size=20))
def test_another_secret_never_verifies(body: bytes, other: str) -> None:
    if other == SECRET:
        return
    with pytest.raises(InvalidSignature):
        verify(authorization_header(body, other), body, SECRET)
