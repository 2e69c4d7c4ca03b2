"""The sandbox's MLS external sender against captured vectors and real davey sessions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import davey
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import DaveError
from rxvoice.testing.sandbox import mls
from tests.vectors import DAVE

CHANNEL = 927310423890473011  # the captured session's channel
GROUP = CHANNEL.to_bytes(8, "big")
A, B, C = 111, 222, 333
APPEND = davey.ProposalsOperationType.append


@pytest.fixture(scope="module")
def signer() -> mls.ExternalSender:
    return mls.ExternalSender(ec.derive_private_key(0x5EED, ec.SECP256R1()))


def session(user: int, signer: mls.ExternalSender) -> davey.DaveSession:
    s = davey.DaveSession(1, user, CHANNEL)
    s.set_external_sender(signer.package)
    return s


# -- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (16383, "7fff"),
        (16384, "80004000"),
        ((1 << 30) - 1, "bfffffff"),
    ],
)
def test_varint_boundaries(value: int, encoded: str) -> None:
    assert mls.encode_varint(value).hex() == encoded
    r = mls.Reader(bytes.fromhex(encoded))
    assert r.varint() == value
    r.end()


@pytest.mark.parametrize("value", [-1, 1 << 30])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(DaveError):
        mls.encode_varint(value)


@pytest.mark.parametrize(
    "data",
    ["c0", "ff00", "4001", "80000001", "80003fff", "40", "800000"],
    ids=[
        "prefix-11",
        "prefix-11b",
        "non-minimal-2",
        "non-minimal-4",
        "non-minimal-4b",
        "short-2",
        "short-4",
    ],
)
def test_varint_refused(data: str) -> None:
    with pytest.raises(DaveError):
        mls.Reader(bytes.fromhex(data)).varint()


def test_reader_bounds() -> None:
    r = mls.Reader(b"\x05abc")
    with pytest.raises(DaveError):
        r.opaque()
    r = mls.Reader(b"\x01\x02\x03")
    assert r.u16() == 0x0102
    with pytest.raises(DaveError):
        r.u16()
    with pytest.raises(DaveError):
        r.end()
    with pytest.raises(DaveError):
        mls.Reader(b"\x00\x02").expect(1, 2, "version")


def test_opaque_and_vectors_roundtrip() -> None:
    assert mls.opaque(b"") == b"\x00"
    assert mls.opaque(b"x" * 64)[:2] == b"\x40\x40"
    refs = [bytes([i]) * 32 for i in range(3)]
    assert mls.split_refs(mls.revoke_vector(refs)) == refs
    assert mls.revoke_vector([]) == b"\x00"


# -- the captured vectors ------------------------------------------------------------------


def test_captured_external_sender_package() -> None:
    key, identity = mls.parse_external_sender(DAVE["EXTERNAL_SENDER"])
    assert len(key) == 65 and key[0] == 4
    assert identity == b"\x00"


def test_captured_proposal_refs_match_the_revoke_vector() -> None:
    messages = mls.split_proposals(DAVE["APPENDING_PROPOSALS"])
    refs = mls.split_refs(DAVE["REVOKING_PROPOSALS"])
    assert len(messages) == len(refs) >= 1
    assert [mls.proposal_ref(m) for m in messages] == refs
    assert mls.append_vector(messages) == DAVE["APPENDING_PROPOSALS"]
    assert mls.revoke_vector(refs) == DAVE["REVOKING_PROPOSALS"]


def test_captured_signatures_verify_under_sign_with_label() -> None:
    key, _ = mls.parse_external_sender(DAVE["EXTERNAL_SENDER"])
    for message in mls.split_proposals(DAVE["APPENDING_PROPOSALS"]):
        assert mls.verify_external_proposal(message, key)
        tampered = bytearray(message)
        tampered[40] ^= 1  # inside the signed KeyPackage
        assert not mls.verify_external_proposal(bytes(tampered), key)
    other = mls.ExternalSender()
    assert not other.verify(mls.split_proposals(DAVE["APPENDING_PROPOSALS"])[0])


def test_captured_add_carries_a_valid_key_package() -> None:
    [message] = mls.split_proposals(DAVE["APPENDING_PROPOSALS"])
    kp = mls.KeyPackage.read(mls.Reader(message, 30))
    assert kp.user_id == 158533742254751744  # the user the capture adds
    assert kp.leaf_node.lifetime == (0, 2**64 - 1)
    assert kp.verify()


# -- our own proposals against davey -------------------------------------------------------


def test_package_layout(signer: mls.ExternalSender) -> None:
    package = signer.package
    assert package[:3] == b"\x40\x41\x04"  # V(65 bytes) of an uncompressed point
    assert package[2:67] == signer.public_key
    assert package[:2] == DAVE["EXTERNAL_SENDER"][:2]
    assert package[67:] == b"\x00\x01" + b"\x01\x00"  # basic credential, identity 00
    assert mls.parse_external_sender(package) == (signer.public_key, b"\x00")


def test_own_add_is_accepted_and_committed(signer: mls.ExternalSender) -> None:
    a, b = session(A, signer), session(B, signer)
    kp_b = b.get_serialized_key_package()
    add_b = signer.propose_add(GROUP, 0, kp_b)
    assert signer.verify(add_b)
    assert mls.split_proposals(mls.append_vector([add_b])) == [add_b]
    result = a.process_proposals(APPEND, mls.append_vector([add_b]), [A, B])
    assert result is not None and result.welcome is not None

    commit, welcome = mls.split_commit_welcome(result.commit + result.welcome)
    assert commit.raw == result.commit
    assert welcome == result.welcome
    assert commit.group_id == GROUP
    assert commit.epoch == 0 and commit.sender_leaf == 0
    assert commit.proposal_refs == (mls.proposal_ref(add_b),)
    assert not commit.has_inline_proposals

    parsed = mls.Welcome.parse(result.welcome)
    assert parsed.serialize() == result.welcome
    ref = mls.key_package_ref(kp_b)
    assert signer.key_package_ref(kp_b) == ref
    assert [r for r, _ in parsed.secrets] == [ref]
    assert parsed.for_member(b"\x00" * 32) is None

    a.process_commit(commit.raw)
    mine = parsed.for_member(ref)
    assert mine is not None
    b.process_welcome(mine.serialize())
    assert a.epoch == b.epoch == 1
    frame = a.encrypt_opus(b"opus" * 10)
    assert b.decrypt(A, davey.MediaType.audio, frame) == b"opus" * 10


def test_own_remove_is_accepted_and_commit_has_no_welcome(signer: mls.ExternalSender) -> None:
    a, b, c = session(A, signer), session(B, signer), session(C, signer)
    adds = [
        signer.propose_add(GROUP, 0, b.get_serialized_key_package()),
        signer.propose_add(GROUP, 0, c.get_serialized_key_package()),
    ]
    result = a.process_proposals(APPEND, mls.append_vector(adds), [A, B, C])
    assert result is not None
    a.process_commit(result.commit)
    assert a.epoch == 1

    remove = signer.propose_remove(GROUP, 1, 1)
    assert signer.verify(remove)
    result = a.process_proposals(APPEND, mls.append_vector([remove]), [A, C])
    assert result is not None and result.welcome is None
    commit, welcome = mls.split_commit_welcome(result.commit)
    assert welcome is None
    assert commit.epoch == 1 and commit.sender_leaf == 0
    assert commit.proposal_refs == (mls.proposal_ref(remove),)
    assert commit.has_path and commit.path_leaf is not None
    assert commit.path_leaf.identity == A.to_bytes(8, "big")
    assert commit.path_leaf.source == 3


def test_revoke_restores_the_state(signer: mls.ExternalSender) -> None:
    a, b = session(A, signer), session(B, signer)
    add_b = signer.propose_add(GROUP, 0, b.get_serialized_key_package())
    assert a.process_proposals(APPEND, mls.append_vector([add_b]), [A, B]) is not None
    revoke = mls.revoke_vector([mls.proposal_ref(add_b)])
    assert a.process_proposals(davey.ProposalsOperationType.revoke, revoke, [A, B]) is None


@pytest.mark.parametrize("defect", ["signature", "epoch", "other-key", "unexpected-user"])
def test_davey_rejects_bad_proposals(signer: mls.ExternalSender, defect: str) -> None:
    a = session(A, signer)
    kp_b = davey.DaveSession(1, B, CHANNEL).get_serialized_key_package()
    expected = [A, B]
    if defect == "signature":
        message = bytearray(signer.propose_add(GROUP, 0, kp_b))
        message[-3] ^= 1
        proposal = bytes(message)
    elif defect == "epoch":
        proposal = signer.propose_add(GROUP, 1, kp_b)
    elif defect == "other-key":
        proposal = mls.ExternalSender().propose_add(GROUP, 0, kp_b)
    else:
        proposal = signer.propose_add(GROUP, 0, kp_b)
        expected = [A]
    with pytest.raises(ValueError, match=r"InvalidSignature|WrongEpoch|UnexpectedUser"):
        a.process_proposals(APPEND, mls.append_vector([proposal]), expected)
    assert not signer.verify(proposal) or defect in ("epoch", "unexpected-user")


def test_signing_is_deterministic(signer: mls.ExternalSender) -> None:
    kp = davey.DaveSession(1, B, CHANNEL).get_serialized_key_package()
    assert signer.propose_add(GROUP, 3, kp) == signer.propose_add(GROUP, 3, kp)
    assert signer.propose_remove(GROUP, 3, 1) != signer.propose_remove(GROUP, 3, 2)
    assert "public_key" in repr(signer)


def test_external_sender_needs_p256() -> None:
    with pytest.raises(ValueError, match="P-256"):
        mls.ExternalSender(ec.generate_private_key(ec.SECP384R1()))


# -- key packages --------------------------------------------------------------------------


def test_key_package_identity_and_signatures() -> None:
    data = davey.DaveSession(1, 158533742254751744, CHANNEL).get_serialized_key_package()
    assert data[:4] == b"\x00\x01\x00\x02"  # bare KeyPackage, §10
    kp = mls.KeyPackage.parse(data)
    assert kp.raw == data
    assert kp.user_id == 158533742254751744
    assert kp.leaf_node.credential_type == 1
    assert kp.leaf_node.lifetime == (0, 2**64 - 1)
    assert kp.verify()
    broken = bytearray(data)
    broken[-2] ^= 1
    assert not mls.KeyPackage.parse(bytes(broken)).verify()
    with pytest.raises(DaveError):
        mls.KeyPackage.parse(data + b"\x00")
    with pytest.raises(DaveError):
        mls.KeyPackage.parse(b"\x00\x01\x00\x01" + data[4:])  # another cipher suite


def fake_commit(group: bytes, epoch: int, leaf: int, proposals: bytes) -> bytes:
    """A structurally valid member commit MLSMessage (its tags are junk)."""
    return (
        b"\x00\x01\x00\x01"
        + mls.opaque(group)
        + epoch.to_bytes(8, "big")
        + b"\x01"
        + leaf.to_bytes(4, "big")
        + mls.opaque(b"")
        + b"\x03"
        + mls.opaque(proposals)
        + b"\x00"  # no UpdatePath
        + mls.opaque(b"sig")
        + mls.opaque(b"confirmation")
        + mls.opaque(b"membership")
    )


def test_commit_with_inline_and_referenced_proposals() -> None:
    inline_remove = b"\x01" + b"\x00\x03" + (2).to_bytes(4, "big")
    by_ref = b"\x02" + mls.opaque(b"r" * 32)
    raw = fake_commit(GROUP, 7, 3, inline_remove + by_ref)
    commit, welcome = mls.split_commit_welcome(raw)
    assert welcome is None
    assert commit.raw == raw
    assert (commit.epoch, commit.sender_leaf) == (7, 3)
    assert commit.has_inline_proposals
    assert commit.proposal_refs == (b"r" * 32,)
    assert not commit.has_path
    with pytest.raises(DaveError):
        mls.split_commit_welcome(fake_commit(GROUP, 7, 3, b"\x01\x00\x04"))  # psk: unsupported
    with pytest.raises(DaveError):
        mls.split_commit_welcome(fake_commit(GROUP, 7, 3, b"\x03"))  # bad ProposalOrRef type


# -- robustness ----------------------------------------------------------------------------


def _commit_payload() -> bytes:
    signer = mls.ExternalSender()
    a, b = session(A, signer), session(B, signer)
    add_b = signer.propose_add(GROUP, 0, b.get_serialized_key_package())
    result = a.process_proposals(APPEND, mls.append_vector([add_b]), [A, B])
    assert result is not None and result.welcome is not None
    return result.commit + result.welcome


COMMIT_WELCOME = _commit_payload()
PARSERS = [
    mls.split_commit_welcome,
    mls.KeyPackage.parse,
    mls.Welcome.parse,
    mls.split_proposals,
    mls.split_refs,
    mls.proposal_ref,
    mls.parse_external_sender,
]


def test_truncations_raise_dave_error_only() -> None:
    for cut in range(len(COMMIT_WELCOME)):
        with contextlib.suppress(DaveError):
            mls.split_commit_welcome(COMMIT_WELCOME[:cut])


def test_commit_without_welcome_and_not_a_commit() -> None:
    commit, _ = mls.split_commit_welcome(COMMIT_WELCOME)
    assert mls.split_commit_welcome(commit.raw)[1] is None
    with pytest.raises(DaveError):
        mls.split_commit_welcome(commit.raw + b"\x00\x02")  # a broken Welcome
    [proposal] = mls.split_proposals(DAVE["APPENDING_PROPOSALS"])
    with pytest.raises(DaveError):
        mls.split_commit_welcome(proposal)  # a proposal, not a commit
    with pytest.raises(DaveError):
        mls.proposal_ref(commit.raw)  # a commit, not a proposal


@given(data=st.binary(max_size=300), which=st.sampled_from(PARSERS))
def test_parsers_raise_only_dave_error(data: bytes, which: Callable[[bytes], object]) -> None:
    with contextlib.suppress(DaveError):
        which(data)


@given(flips=st.lists(st.integers(0, len(COMMIT_WELCOME) * 8 - 1), min_size=1, max_size=4))
def test_bit_flips_raise_only_dave_error(flips: list[int]) -> None:
    data = bytearray(COMMIT_WELCOME)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    with contextlib.suppress(DaveError):
        mls.split_commit_welcome(bytes(data))
    assert mls.verify_external_proposal(bytes(data), b"\x04" + b"\x00" * 64) is False
