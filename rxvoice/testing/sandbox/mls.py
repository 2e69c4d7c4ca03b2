"""The MLS pieces the sandbox's voice gateway needs: TLS encoding and the external sender.

Discord's voice gateway is the DAVE group's MLS delivery service and its only
*external sender*: it signs Add and Remove proposals with its own P-256 key,
forwards members' commits and welcomes, and tracks leaf indices. None of that
needs group secrets (no HPKE, key schedule or TreeKEM), so this module is just:

- TLS presentation encoding (protocol.md §5.3): big-endian integers and
  ``opaque<V>`` vectors with the QUIC-style MLS varint length;
- :class:`ExternalSender`: the op 25 package, signed external Add/Remove
  PublicMessages (§5.6, §10), ProposalRefs and KeyPackageRefs;
- op 27 vectors (:func:`append_vector`, :func:`revoke_vector`);
- parsers for what clients send: :class:`KeyPackage` (op 26) and the op 28
  commit + optional Welcome (:func:`split_commit_welcome`, §7.4).

Every parser raises only :class:`rxvoice.errors.DaveError` on malformed input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rxvoice.errors import DaveError, InvalidArgument

__all__ = [
    "CIPHER_SUITE",
    "Commit",
    "ExternalSender",
    "KeyPackage",
    "LeafNode",
    "Reader",
    "Welcome",
    "append_vector",
    "encode_varint",
    "key_package_ref",
    "opaque",
    "parse_external_sender",
    "proposal_ref",
    "revoke_vector",
    "sign_with_label",
    "split_commit_welcome",
    "split_proposals",
    "split_refs",
    "verify_external_proposal",
    "verify_with_label",
]

MLS10 = 1
CIPHER_SUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256
WIRE_PUBLIC_MESSAGE = 1
SENDER_MEMBER, SENDER_EXTERNAL = 1, 2
CONTENT_APPLICATION, CONTENT_PROPOSAL, CONTENT_COMMIT = 1, 2, 3
PROPOSAL_ADD, PROPOSAL_UPDATE, PROPOSAL_REMOVE = 1, 2, 3
CREDENTIAL_BASIC, CREDENTIAL_X509 = 1, 2
_MAX_VARINT = (1 << 30) - 1
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # RFC 6979: reproducible bytes


# -- TLS presentation encoding -----------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode an MLS variable-length integer in its minimal form (RFC 9420 §2.1.2).

    Raises:
        DaveError: ``value`` is negative or above 2^30 - 1.
    """
    if value < 0 or value > _MAX_VARINT:
        raise DaveError(f"MLS varint out of range: {value}")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x8000_0000).to_bytes(4, "big")


def opaque(data: bytes) -> bytes:
    """Encode ``opaque data<V>``: varint byte length, then the bytes."""
    return encode_varint(len(data)) + data


class Reader:
    """A bounds-checked cursor over TLS-encoded bytes.

    Args:
        data: The bytes to read.
        pos: Where to start.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    @property
    def remaining(self) -> int:
        """How many bytes are left."""
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        """Read ``n`` bytes.

        Raises:
            DaveError: Fewer than ``n`` bytes are left.
        """
        if n < 0 or n > self.remaining:
            raise DaveError(f"truncated MLS data: need {n} bytes at {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int) -> int:
        """Read a big-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "big")

    def u8(self) -> int:
        """Read a ``uint8``."""
        return self.uint(1)

    def u16(self) -> int:
        """Read a ``uint16``."""
        return self.uint(2)

    def u32(self) -> int:
        """Read a ``uint32``."""
        return self.uint(4)

    def u64(self) -> int:
        """Read a ``uint64``."""
        return self.uint(8)

    def varint(self) -> int:
        """Read an MLS varint; the ``11`` prefix and non-minimal encodings are refused."""
        first = self.u8()
        prefix = first >> 6
        if prefix == 3:
            raise DaveError("invalid MLS varint prefix 0b11")
        size = 1 << prefix
        value = int.from_bytes(bytes([first & 0x3F]) + self.take(size - 1), "big")
        if size > 1 and value < 1 << (8 * (size // 2) - 2):
            raise DaveError("non-minimal MLS varint")
        return value

    def opaque(self) -> bytes:
        """Read ``opaque x<V>``."""
        return self.take(self.varint())

    def expect(self, value: int, size: int, what: str) -> None:
        """Read an integer and insist that it equals ``value``."""
        got = self.uint(size)
        if got != value:
            raise DaveError(f"unexpected {what}: {got} (want {value})")

    def end(self) -> None:
        """Insist that everything was read."""
        if self.remaining:
            raise DaveError(f"{self.remaining} trailing bytes in MLS data")


# -- signatures and references -----------------------------------------------------------


def _label(label: str) -> bytes:
    return opaque(b"MLS 1.0 " + label.encode())


def sign_with_label(key: ec.EllipticCurvePrivateKey, label: str, content: bytes) -> bytes:
    """SignWithLabel (RFC 9420 §5.1.2): DER ECDSA-P256-SHA256 over SignContent."""
    return key.sign(_label(label) + opaque(content), _ECDSA)


def verify_with_label(public_key: bytes, label: str, content: bytes, signature: bytes) -> bool:
    """VerifyWithLabel for a SEC1 P-256 public key; ``False`` on any failure."""
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        key.verify(signature, _label(label) + opaque(content), _ECDSA)
    except (InvalidSignature, ValueError):
        return False
    return True


def _ref_hash(label: str, value: bytes) -> bytes:
    return hashlib.sha256(_label(label) + opaque(value)).digest()


def key_package_ref(key_package: bytes) -> bytes:
    """KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)."""
    return _ref_hash("KeyPackage Reference", key_package)


# -- structures clients send -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafNode:
    """The parts of an MLS LeafNode the gateway looks at (RFC 9420 §7.2).

    Attributes:
        signature_key: The member's SEC1 P-256 signature key.
        credential_type: 1 = basic.
        identity: The basic credential's identity (DAVE: user id, 8 bytes BE).
        source: 1 key_package, 2 update, 3 commit.
        lifetime: ``(not_before, not_after)`` for source 1, else ``None``.
        tbs: The encoded fields the signature covers (without group context).
        signature: The leaf's own signature.
    """

    signature_key: bytes
    credential_type: int
    identity: bytes
    source: int
    lifetime: tuple[int, int] | None
    tbs: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @classmethod
    def read(cls, r: Reader) -> LeafNode:
        """Read one LeafNode from ``r``."""
        start = r.pos
        r.opaque()  # encryption_key
        signature_key = r.opaque()
        credential_type = r.u16()
        if credential_type not in (CREDENTIAL_BASIC, CREDENTIAL_X509):
            raise DaveError(f"unknown credential type {credential_type}")
        identity = r.opaque()  # basic identity, or the x509 certificate list
        for _ in range(5):  # capabilities: versions, suites, extensions, proposals, credentials
            r.opaque()
        source = r.u8()
        lifetime = None
        if source == 1:
            lifetime = (r.u64(), r.u64())
        elif source == 3:
            r.opaque()  # parent_hash
        elif source != 2:
            raise DaveError(f"unknown leaf_node_source {source}")
        r.opaque()  # extensions
        tbs = r.data[start : r.pos]
        return cls(signature_key, credential_type, identity, source, lifetime, tbs, r.opaque())


@dataclass(frozen=True, slots=True)
class KeyPackage:
    """A bare MLS KeyPackage, as DAVE clients send it in op 26 (§5.5, §10).

    Attributes:
        raw: The exact bytes.
        leaf_node: Its LeafNode.
    """

    raw: bytes = field(repr=False)
    leaf_node: LeafNode
    tbs: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> KeyPackage:
        """Parse and structurally check a KeyPackage (MLS 1.0, suite 2).

        Raises:
            DaveError: Malformed, or another version or cipher suite.
        """
        r = Reader(data)
        kp = cls.read(r)
        r.end()
        return kp

    @classmethod
    def read(cls, r: Reader) -> KeyPackage:
        """Read one KeyPackage from ``r`` (e.g. inside an Add proposal)."""
        start = r.pos
        r.expect(MLS10, 2, "KeyPackage version")
        r.expect(CIPHER_SUITE, 2, "KeyPackage cipher suite")
        r.opaque()  # init_key
        leaf = LeafNode.read(r)
        r.opaque()  # extensions
        tbs = r.data[start : r.pos]
        signature = r.opaque()
        if leaf.source != 1:
            raise DaveError("KeyPackage leaf node is not from a key package")
        return cls(r.data[start : r.pos], leaf, tbs, signature)

    @property
    def user_id(self) -> int | None:
        """The DAVE user id (8-byte big-endian basic identity), or ``None``."""
        leaf = self.leaf_node
        if leaf.credential_type != CREDENTIAL_BASIC or len(leaf.identity) != 8:
            return None
        return int.from_bytes(leaf.identity, "big")

    def verify(self) -> bool:
        """Check the KeyPackage and LeafNode signatures with the leaf's own key."""
        key = self.leaf_node.signature_key
        return verify_with_label(key, "KeyPackageTBS", self.tbs, self.signature) and (
            verify_with_label(key, "LeafNodeTBS", self.leaf_node.tbs, self.leaf_node.signature)
        )


def _skip_proposal(r: Reader) -> None:
    """Read over one Proposal (RFC 9420 §12.1).

    Only the types DAVE allows (and Update, which a member may send) are
    understood; anything else makes the message unusable for the gateway anyway.
    """
    kind = r.u16()
    if kind == PROPOSAL_ADD:
        KeyPackage.read(r)
    elif kind == PROPOSAL_UPDATE:
        LeafNode.read(r)
    elif kind == PROPOSAL_REMOVE:
        r.u32()
    else:
        raise DaveError(f"unsupported proposal type {kind}")


@dataclass(frozen=True, slots=True)
class _Framed:
    """An MLSMessage PublicMessage split into the pieces that matter."""

    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    content_type: int
    content_end: int  # end of FramedContent: the signed bytes are data[:content_end]
    auth_end: int  # end of FramedContentAuthData (AuthenticatedContent ends here)
    signature: bytes
    commit: _CommitBody | None  # for content_type commit


_CommitBody: TypeAlias = tuple[tuple[bytes, ...], bool, "LeafNode | None"]
"""A commit's (proposal refs, has inline proposals, UpdatePath leaf)."""


def _read_public_message(r: Reader) -> _Framed:
    """Read one MLSMessage holding a PublicMessage."""
    r.expect(MLS10, 2, "MLS version")
    r.expect(WIRE_PUBLIC_MESSAGE, 2, "wire format")
    group_id = r.opaque()
    epoch = r.u64()
    sender_type = r.u8()
    sender_index = r.u32() if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL) else 0
    if sender_type not in (1, 2, 3, 4):
        raise DaveError(f"unknown sender type {sender_type}")
    r.opaque()  # authenticated_data
    content_type = r.u8()
    commit = None
    if content_type == CONTENT_PROPOSAL:
        _skip_proposal(r)
    elif content_type == CONTENT_COMMIT:
        commit = _read_commit_body(r)
    elif content_type == CONTENT_APPLICATION:
        r.opaque()
    else:
        raise DaveError(f"unknown content type {content_type}")
    content_end = r.pos
    signature = r.opaque()
    if content_type == CONTENT_COMMIT:
        r.opaque()  # confirmation_tag
    auth_end = r.pos
    if sender_type == SENDER_MEMBER:
        r.opaque()  # membership_tag
    return _Framed(
        group_id,
        epoch,
        sender_type,
        sender_index,
        content_type,
        content_end,
        auth_end,
        signature,
        commit,
    )


def _read_commit_body(r: Reader) -> _CommitBody:
    body = Reader(r.opaque())
    refs: list[bytes] = []
    inline = False
    while body.remaining:
        kind = body.u8()
        if kind == 1:
            _skip_proposal(body)
            inline = True
        elif kind == 2:
            refs.append(body.opaque())
        else:
            raise DaveError(f"unknown ProposalOrRef type {kind}")
    present = r.u8()
    path_leaf = None
    if present == 1:
        path_leaf = LeafNode.read(r)
        r.opaque()  # UpdatePathNode nodes<V>
    elif present != 0:
        raise DaveError(f"bad optional<UpdatePath> flag {present}")
    return tuple(refs), inline, path_leaf


# -- the external sender -----------------------------------------------------------------


def parse_external_sender(package: bytes) -> tuple[bytes, bytes]:
    """Split an op 25 ExternalSender into ``(signature_key, identity)``.

    Raises:
        DaveError: Malformed, or not a basic credential.
    """
    r = Reader(package)
    key = r.opaque()
    r.expect(CREDENTIAL_BASIC, 2, "external sender credential type")
    identity = r.opaque()
    r.end()
    return key, identity


def _one_message(message: bytes) -> _Framed:
    r = Reader(message)
    framed = _read_public_message(r)
    r.end()
    return framed


def proposal_ref(message: bytes) -> bytes:
    """ProposalRef of one proposal MLSMessage (§5.6).

    RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent), where
    AuthenticatedContent is the message minus its version and membership tag.

    Raises:
        DaveError: ``message`` is not exactly one proposal PublicMessage.
    """
    framed = _one_message(message)
    if framed.content_type != CONTENT_PROPOSAL:
        raise DaveError("not a proposal message")
    return _ref_hash("Proposal Reference", message[2 : framed.auth_end])


def verify_external_proposal(message: bytes, signature_key: bytes) -> bool:
    """Check an external proposal's signature (FramedContentTBS, no GroupContext).

    Returns:
        ``False`` when malformed, not from an external sender, or badly signed.
    """
    try:
        framed = _one_message(message)
    except DaveError:
        return False
    if framed.sender_type != SENDER_EXTERNAL:
        return False
    tbs = message[: framed.content_end]  # version ‖ wire_format ‖ FramedContent
    return verify_with_label(signature_key, "FramedContentTBS", tbs, framed.signature)


class ExternalSender:
    """The gateway's MLS external sender: a P-256 key that signs Add/Remove proposals.

    Args:
        private_key: The signing key; a fresh one when omitted.
        identity: The basic credential identity in op 25. Discord's captured
            package uses the single byte ``00``.
    """

    proposal_ref = staticmethod(proposal_ref)
    key_package_ref = staticmethod(key_package_ref)

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey | None = None, *, identity: bytes = b"\x00"
    ) -> None:
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise InvalidArgument("the external sender needs a P-256 key")
        self.public_key = self._key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        self.identity = identity

    def __repr__(self) -> str:
        return f"ExternalSender(public_key={self.public_key[:8].hex()}…)"

    @property
    def package(self) -> bytes:
        """The op 25 payload: ``V(key) ‖ u16 1 ‖ V(identity)``."""
        return opaque(self.public_key) + CREDENTIAL_BASIC.to_bytes(2, "big") + opaque(self.identity)

    def propose_add(self, group_id: bytes, epoch: int, key_package: bytes) -> bytes:
        """A signed external Add proposal for ``key_package`` at ``epoch``."""
        return self._propose(group_id, epoch, PROPOSAL_ADD.to_bytes(2, "big") + key_package)

    def propose_remove(self, group_id: bytes, epoch: int, leaf_index: int) -> bytes:
        """A signed external Remove proposal for ``leaf_index`` at ``epoch``."""
        body = PROPOSAL_REMOVE.to_bytes(2, "big") + leaf_index.to_bytes(4, "big")
        return self._propose(group_id, epoch, body)

    def verify(self, message: bytes) -> bool:
        """Whether ``message`` is an external proposal signed by this sender."""
        return verify_external_proposal(message, self.public_key)

    def _propose(self, group_id: bytes, epoch: int, proposal: bytes) -> bytes:
        tbs = b"".join(
            (
                MLS10.to_bytes(2, "big"),
                WIRE_PUBLIC_MESSAGE.to_bytes(2, "big"),
                opaque(group_id),
                epoch.to_bytes(8, "big"),
                bytes([SENDER_EXTERNAL]),
                (0).to_bytes(4, "big"),  # sender_index: our slot in external_senders
                opaque(b""),  # authenticated_data
                bytes([CONTENT_PROPOSAL]),
                proposal,
            )
        )
        # An external sender's message has no membership tag and no confirmation tag.
        return tbs + opaque(sign_with_label(self._key, "FramedContentTBS", tbs))


# -- op 27 vectors -----------------------------------------------------------------------


def append_vector(messages: Iterable[bytes]) -> bytes:
    """The op 27 append payload after the operation byte: ``V(message ‖ message …)``."""
    return opaque(b"".join(messages))


def revoke_vector(refs: Iterable[bytes]) -> bytes:
    """The op 27 revoke payload after the operation byte: ``V(V(ref) ‖ V(ref) …)``."""
    return opaque(b"".join(opaque(ref) for ref in refs))


def split_proposals(vector: bytes) -> list[bytes]:
    """Split an op 27 append vector back into its MLSMessages.

    Raises:
        DaveError: Malformed.
    """
    outer = Reader(vector)
    body = Reader(outer.opaque())
    outer.end()
    messages = []
    while body.remaining:
        start = body.pos
        _read_public_message(body)
        messages.append(body.data[start : body.pos])
    return messages


def split_refs(vector: bytes) -> list[bytes]:
    """Split an op 27 revoke vector into its ProposalRefs."""
    outer = Reader(vector)
    body = Reader(outer.opaque())
    outer.end()
    refs = []
    while body.remaining:
        refs.append(body.opaque())
    return refs


# -- op 28 -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commit:
    """A member's commit from op 28, as the delivery service needs it.

    Attributes:
        raw: The exact commit MLSMessage bytes (what op 29 forwards).
        group_id: The MLS group id (the channel id, 8 bytes BE).
        epoch: The epoch the commit was made in.
        sender_leaf: The committer's leaf index.
        proposal_refs: The ProposalRefs committed, in commit order.
        has_inline_proposals: Whether any proposal is inline (DAVE forbids that).
        has_path: Whether an UpdatePath is present.
        path_leaf: The UpdatePath's new LeafNode, if any.
    """

    raw: bytes = field(repr=False)
    group_id: bytes
    epoch: int
    sender_leaf: int
    proposal_refs: tuple[bytes, ...] = field(repr=False)
    has_inline_proposals: bool
    has_path: bool
    path_leaf: LeafNode | None = field(default=None, repr=False)


def split_commit_welcome(payload: bytes) -> tuple[Commit, bytes | None]:
    """Split an op 28 payload into the commit and the optional bare Welcome.

    There is no length between the two (§5.5, §10): the commit MLSMessage is
    parsed to find where it ends, and whatever follows is the Welcome.

    Raises:
        DaveError: Malformed, not a member's commit, or a malformed Welcome.
    """
    r = Reader(payload)
    framed = _read_public_message(r)
    if framed.commit is None:
        raise DaveError("op 28 does not start with a commit")
    if framed.sender_type != SENDER_MEMBER:
        raise DaveError("op 28 commit was not sent by a member")
    refs, inline, path_leaf = framed.commit
    commit = Commit(
        raw=payload[: r.pos],
        group_id=framed.group_id,
        epoch=framed.epoch,
        sender_leaf=framed.sender_index,
        proposal_refs=refs,
        has_inline_proposals=inline,
        has_path=path_leaf is not None,
        path_leaf=path_leaf,
    )
    welcome = payload[r.pos :] or None
    if welcome is not None:
        Welcome.parse(welcome)
    return commit, welcome


@dataclass(frozen=True, slots=True)
class Welcome:
    """A bare MLS Welcome (RFC 9420 §12.4.3.1).

    Attributes:
        cipher_suite: The cipher suite (2 for DAVE v1).
        secrets: ``(KeyPackageRef, encoded EncryptedGroupSecrets)`` per new member.
        encrypted_group_info: The GroupInfo, encrypted for all new members alike.
    """

    cipher_suite: int
    secrets: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    encrypted_group_info: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> Welcome:
        """Parse a bare Welcome.

        Raises:
            DaveError: Malformed.
        """
        r = Reader(data)
        cipher_suite = r.u16()
        body = Reader(r.opaque())
        secrets = []
        while body.remaining:
            start = body.pos
            ref = body.opaque()
            body.opaque()  # kem_output
            body.opaque()  # ciphertext
            secrets.append((ref, body.data[start : body.pos]))
        info = r.opaque()
        r.end()
        return cls(cipher_suite, tuple(secrets), info)

    def serialize(self) -> bytes:
        """Encode the Welcome."""
        entries = b"".join(entry for _, entry in self.secrets)
        return (
            self.cipher_suite.to_bytes(2, "big")
            + opaque(entries)
            + opaque(self.encrypted_group_info)
        )

    def for_member(self, ref: bytes) -> Welcome | None:
        """The Welcome with only the entry for KeyPackageRef ``ref``, as Discord sends it."""
        mine = tuple(entry for entry in self.secrets if entry[0] == ref)
        return Welcome(self.cipher_suite, mine, self.encrypted_group_info) if mine else None
