"""K1 keys and transaction signing for the chain adapter, with secrets kept out of every string.

A `PrivateKey` never shows its secret in repr/str or in any exception message (errors about a
malformed key never echo the input); the only way out is the explicitly named `reveal()`, used
to write a demo key file. A `KeyRing` holds the operator's keys, loaded from a key file or an
environment variable, and signs transaction digests with canonical signatures (EOSIO rejects
non-canonical ones, so signing retries with extra nonce entropy until the signature is).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import coincurve
from coincurve._libsecp256k1 import ffi

# --- base58 and the EOSIO key string formats ---------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


class KeyFormatError(ValueError):
    """A key or signature string is malformed. The message never contains the input."""


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        i = _B58_INDEX.get(c)
        if i is None:
            raise KeyFormatError("invalid base58 character")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def _ripemd160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _check_suffix(payload: bytes, suffix: bytes) -> bytes:
    return _ripemd160(payload + suffix)[:4]


def _decode_checked(body: str, suffix: bytes, size: int, what: str) -> bytes:
    raw = b58decode(body)
    if len(raw) != size + 4:
        raise KeyFormatError(f"malformed {what}: wrong length")
    payload, check = raw[:size], raw[size:]
    if _check_suffix(payload, suffix) != check:
        raise KeyFormatError(f"malformed {what}: checksum mismatch")
    return payload


_KEY_TYPES = {0: "K1", 1: "R1"}
_KEY_TYPE_IDS = {v: k for k, v in _KEY_TYPES.items()}


def public_key_to_bytes(text: str) -> bytes:
    """'PUB_K1_…' / 'PUB_R1_…' / legacy 'EOS…' -> 34 bytes (type byte + compressed point)."""
    if text.startswith("PUB_"):
        kind = text[4:6]
        if kind not in _KEY_TYPE_IDS or text[6:7] != "_":
            raise KeyFormatError("unsupported public key type (use PUB_K1_ or PUB_R1_)")
        point = _decode_checked(text[7:], kind.encode(), 33, "public key")
        return bytes([_KEY_TYPE_IDS[kind]]) + point
    if text.startswith("EOS"):
        raw = b58decode(text[3:])
        if len(raw) != 37 or _ripemd160(raw[:33])[:4] != raw[33:]:
            raise KeyFormatError("malformed legacy EOS public key")
        return b"\0" + raw[:33]
    raise KeyFormatError("a public key starts with PUB_K1_, PUB_R1_ or EOS")


def public_key_from_bytes(data: bytes) -> tuple[str, int]:
    """Binary public key at the start of `data` -> ('PUB_K1_…', bytes used)."""
    if len(data) < 34:
        raise KeyFormatError("public key: input ends early")
    kind = _KEY_TYPES.get(data[0])
    if kind is None:
        raise KeyFormatError(f"public key type {data[0]} is not supported")
    point = data[1:34]
    return f"PUB_{kind}_" + b58encode(point + _check_suffix(point, kind.encode())), 34


def signature_to_bytes(text: str) -> bytes:
    m = re.fullmatch(r"SIG_(K1|R1)_(\w+)", text)
    if not m:
        raise KeyFormatError("a signature starts with SIG_K1_ or SIG_R1_")
    kind = m.group(1)
    sig = _decode_checked(m.group(2), kind.encode(), 65, "signature")
    return bytes([_KEY_TYPE_IDS[kind]]) + sig


def signature_from_bytes(data: bytes) -> tuple[str, int]:
    if len(data) < 66:
        raise KeyFormatError("signature: input ends early")
    kind = _KEY_TYPES.get(data[0])
    if kind is None:
        raise KeyFormatError(f"signature type {data[0]} is not supported")
    sig = data[1:66]
    return f"SIG_{kind}_" + b58encode(sig + _check_suffix(sig, kind.encode())), 66


def legacy_public_key(text: str) -> str:
    """Any K1 public key string -> the legacy 'EOS…' form (what older tools print)."""
    raw = public_key_to_bytes(text)
    if raw[0] != 0:
        raise KeyFormatError("only K1 keys have a legacy EOS form")
    point = raw[1:]
    return "EOS" + b58encode(point + _ripemd160(point)[:4])


def normalize_public_key(text: str) -> str:
    return public_key_from_bytes(public_key_to_bytes(text))[0]


# --- private keys and signing -----------------------------------------------------------------


def is_canonical(compact: bytes) -> bool:
    """EOSIO's canonical test on a 65-byte compact signature (recovery byte, r, s)."""
    c = compact
    return (
        not c[1] & 0x80
        and not (c[1] == 0 and not c[2] & 0x80)
        and not c[33] & 0x80
        and not (c[33] == 0 and not c[34] & 0x80)
    )


class PrivateKey:
    """A K1 private key. repr/str show only the public key; `reveal()` is the one way out."""

    __slots__ = ("_key", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise KeyFormatError("a K1 private key is 32 bytes")
        try:
            self._key = coincurve.PrivateKey(secret)
        except Exception:
            raise KeyFormatError("private key is out of the secp256k1 range") from None
        point = self._key.public_key.format(compressed=True)
        self.public_key = public_key_from_bytes(b"\0" + point)[0]

    @classmethod
    def generate(cls) -> "PrivateKey":
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def parse(cls, text: str) -> "PrivateKey":
        """'PVT_K1_…' or a legacy WIF ('5…'). Errors never include the text."""
        if not isinstance(text, str):
            raise KeyFormatError("a private key is a string")
        text = text.strip()
        if text.startswith("PVT_K1_"):
            return cls(_decode_checked(text[7:], b"K1", 32, "private key"))
        if text.startswith("PVT_"):
            raise KeyFormatError("only PVT_K1_ private keys are supported")
        try:
            raw = b58decode(text)
        except KeyFormatError:
            raise KeyFormatError("malformed private key: not PVT_K1_ and not base58 WIF") from None
        if len(raw) == 38 and raw[33] == 1:  # compressed-flag WIF
            raw = raw[:33] + raw[34:]
        if len(raw) != 37 or raw[0] != 0x80:
            raise KeyFormatError("malformed private key: not PVT_K1_ and not a WIF key")
        if _sha256(_sha256(raw[:33]))[:4] != raw[33:]:
            raise KeyFormatError("malformed WIF private key: checksum mismatch")
        return cls(raw[1:33])

    def reveal(self) -> str:
        """The PVT_K1_ string. Only for writing a key file the user asked for; never log it."""
        s = self._key.secret
        return "PVT_K1_" + b58encode(s + _check_suffix(s, b"K1"))

    def reveal_wif(self) -> str:
        payload = b"\x80" + self._key.secret
        return b58encode(payload + _sha256(_sha256(payload))[:4])

    def sign_digest(self, digest: bytes) -> str:
        """Canonical SIG_K1_ signature of a 32-byte digest (retrying with fresh nonce entropy)."""
        if len(digest) != 32:
            raise ValueError("the digest to sign is 32 bytes")
        for attempt in range(1, 1 << 16):
            extra = ffi.new("unsigned char[32]", attempt.to_bytes(32, "little")) if attempt > 1 else ffi.NULL
            rsv = self._key.sign_recoverable(digest, hasher=None, custom_nonce=(ffi.NULL, extra))
            compact = bytes([rsv[64] + 27 + 4]) + rsv[:64]
            if is_canonical(compact):
                return signature_from_bytes(b"\0" + compact)[0]
        raise RuntimeError("no canonical signature found")  # pragma: no cover

    def __repr__(self) -> str:
        return f"PrivateKey(public_key={self.public_key!r})"

    __str__ = __repr__

    def __reduce__(self):  # never pickle a secret by accident
        raise TypeError("private keys cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other._key.secret == self._key.secret

    def __hash__(self) -> int:
        return hash(self.public_key)


def recover_public_key(digest: bytes, signature: str) -> str:
    """The K1 public key that made `signature` over `digest` (for tests and sanity checks)."""
    raw = signature_to_bytes(signature)[1:]
    rsv = raw[1:] + bytes([raw[0] - 31])
    pub = coincurve.PublicKey.from_signature_and_message(rsv, digest, hasher=None)
    return public_key_from_bytes(b"\0" + pub.format(compressed=True))[0]


def transaction_digest(chain_id: str, packed_trx: bytes, context_free_data: bytes = b"") -> bytes:
    """sha256(chain_id + packed_trx + sha256(cfd) or 32 zero bytes): what EOSIO signs."""
    cfd = _sha256(context_free_data) if context_free_data else b"\0" * 32
    return _sha256(bytes.fromhex(chain_id) + packed_trx + cfd)


# --- the key ring -----------------------------------------------------------------------------

DEFAULT_ENV = "BOID_CHAIN_KEYS"
_PERM = re.compile(r"^[a-z1-5.]{1,13}@[a-z1-5.]{1,13}$")


class KeyRing:
    """The keys the operator may sign with, by public key, optionally labelled 'account@perm'.

    Key file formats: one key per line (`PVT_K1_…` or `account@perm PVT_K1_…`, `#` comments), or
    JSON: a list of keys, or an object {"account@perm": "PVT_K1_…"}."""

    def __init__(self, keys: Iterable[PrivateKey] = (), labels: Mapping[str, str] | None = None) -> None:
        self._keys: dict[str, PrivateKey] = {}
        self.labels: dict[str, str] = {}  # "account@perm" -> public key
        for k in keys:
            self.add(k)
        for perm, pub in (labels or {}).items():
            self.labels[perm] = normalize_public_key(pub)

    def add(self, key: PrivateKey | str, label: str | None = None) -> str:
        if isinstance(key, str):
            key = PrivateKey.parse(key)
        self._keys[key.public_key] = key
        if label:
            if not _PERM.match(label):
                raise KeyFormatError(f"key label {label!r} is not 'account@permission'")
            self.labels[label] = key.public_key
        return key.public_key

    @classmethod
    def parse(cls, text: str, source: str = "keys") -> "KeyRing":
        ring = cls()
        stripped = text.strip()
        if stripped.startswith(("[", "{")):
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as e:
                # position only: the decoder's message could quote key material
                raise KeyFormatError(f"{source}: invalid JSON at line {e.lineno} column {e.colno}") from None
            items = data.items() if isinstance(data, dict) else ((None, v) for v in data)
            for i, (label, value) in enumerate(items):
                if not isinstance(value, str):
                    raise KeyFormatError(f"{source}: entry {label or i} is not a key string")
                try:
                    ring.add(value, label)
                except KeyFormatError as e:
                    raise KeyFormatError(f"{source}: entry {label or i}: {e}") from None
            return ring
        for lineno, line in enumerate(re.split(r"[\n;]", text), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) > 2:
                raise KeyFormatError(f"{source}: line {lineno}: expected '[account@perm] KEY'")
            label, key = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
            try:
                ring.add(key, label)
            except KeyFormatError as e:
                raise KeyFormatError(f"{source}: line {lineno}: {e}") from None
        return ring

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "KeyRing":
        return cls.parse(Path(path).read_text(), source=str(path))

    @classmethod
    def from_env(cls, var: str = DEFAULT_ENV, environ: Mapping[str, str] | None = None) -> "KeyRing":
        env = os.environ if environ is None else environ
        if var not in env:
            raise KeyFormatError(f"environment variable {var} is not set")
        return cls.parse(env[var], source=f"${var}")

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the ring as a JSON key file, readable only by the owner (0600)."""
        by_pub = {pub: label for label, pub in self.labels.items()}
        data: dict[str, str] | list[str]
        if all(pub in by_pub for pub in self._keys) and len(by_pub) == len(self.labels):
            data = {by_pub[pub]: k.reveal() for pub, k in self._keys.items()}
        else:
            data = [k.reveal() for k in self._keys.values()]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)

    def public_keys(self) -> list[str]:
        return list(self._keys)

    def public_key_for(self, permission: str) -> str | None:
        return self.labels.get(permission)

    def key(self, public_key: str) -> PrivateKey:
        return self._keys[normalize_public_key(public_key)]

    def __contains__(self, public_key: object) -> bool:
        return isinstance(public_key, str) and normalize_public_key(public_key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def sign(self, digest: bytes, public_keys: Iterable[str]) -> list[str]:
        return [self.key(p).sign_digest(digest) for p in public_keys]

    def merged(self, other: "KeyRing") -> "KeyRing":
        ring = KeyRing(list(self._keys.values()) + list(other._keys.values()))
        ring.labels = {**self.labels, **other.labels}
        return ring

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys: {', '.join(self._keys)})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("key rings cannot be pickled")
