"""K1 keys: formats, canonical signatures, the key ring, and that secrets never leak."""

import hashlib
import logging
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boidcluster.adapters.chain.keys import (
    KeyFormatError,
    KeyRing,
    PrivateKey,
    is_canonical,
    legacy_public_key,
    normalize_public_key,
    public_key_to_bytes,
    recover_public_key,
    signature_to_bytes,
    transaction_digest,
)

DEV_WIF = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3"
DEV_PUB_LEGACY = "EOS6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5GDW5CV"
DEV_PUB = "PUB_K1_6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5BoDq63"


def test_known_dev_key_in_both_formats():
    k = PrivateKey.parse(DEV_WIF)
    assert k.public_key == DEV_PUB
    assert legacy_public_key(k.public_key) == DEV_PUB_LEGACY
    assert normalize_public_key(DEV_PUB_LEGACY) == DEV_PUB
    assert PrivateKey.parse(k.reveal()) == k
    assert k.reveal().startswith("PVT_K1_")
    assert PrivateKey.parse(k.reveal_wif()) == k


@pytest.mark.parametrize(
    "bad",
    [DEV_WIF[:-1] + "4", "PVT_K1_" + "1" * 50, "PVT_R1_abc", "not a key", "", "0OIl"],
)
def test_malformed_private_keys_are_rejected_without_echo(bad):
    with pytest.raises(KeyFormatError) as e:
        PrivateKey.parse(bad)
    if bad:
        assert bad not in str(e.value) and bad not in repr(e.value)


def test_public_key_checksums_are_checked():
    with pytest.raises(KeyFormatError):
        public_key_to_bytes(DEV_PUB[:-1] + ("2" if DEV_PUB[-1] != "2" else "3"))
    with pytest.raises(KeyFormatError):
        public_key_to_bytes(DEV_PUB_LEGACY[:-1] + "X")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_signatures_are_canonical_and_recover_the_key(secret, digest):
    try:
        key = PrivateKey(secret)
    except KeyFormatError:
        return  # outside the curve order
    sig = key.sign_digest(digest)
    assert sig.startswith("SIG_K1_")
    assert is_canonical(signature_to_bytes(sig)[1:])
    assert recover_public_key(digest, sig) == key.public_key


def test_transaction_digest_layout():
    chain_id = "ab" * 32
    assert transaction_digest(chain_id, b"trx") == hashlib.sha256(bytes.fromhex(chain_id) + b"trx" + b"\0" * 32).digest()


def test_secrets_never_appear_in_strings_logs_or_pickles(caplog, tmp_path):
    k = PrivateKey.generate()
    secrets = [k.reveal(), k.reveal_wif(), k.reveal()[7:]]
    ring = KeyRing([k])
    ring.add(PrivateKey.parse(DEV_WIF), "eosio@active")
    texts = [repr(k), str(k), f"{k}", f"{k!r}", repr(ring), str(ring), f"{ring}", repr([k, ring]), repr({"k": k})]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("key %s ring %r", k, ring)
        logging.getLogger("test").info("%s", vars(ring) if hasattr(ring, "__dict__") else ring)
    texts.append(caplog.text)
    for t in texts:
        for s in secrets + [DEV_WIF]:
            assert s not in t
    with pytest.raises(TypeError):
        pickle.dumps(k)
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_bad_key_file_errors_name_the_line_not_the_key(tmp_path):
    good = PrivateKey.generate().reveal()
    bad = good[:-2] + ("zz" if not good.endswith("zz") else "yy")
    f = tmp_path / "keys"
    f.write_text(f"# operator keys\n{good}\nboidoperator@operate {bad}\n")
    with pytest.raises(KeyFormatError) as e:
        KeyRing.from_file(f)
    msg = str(e.value)
    assert "line 3" in msg and bad not in msg and good not in msg
    f.write_text('{"a@active": "' + bad + '"}')
    with pytest.raises(KeyFormatError) as e:
        KeyRing.from_file(f)
    assert "a@active" in str(e.value) and bad not in str(e.value)
    f.write_text('["' + good + '",')  # broken JSON: the decoder's message must not quote the key
    with pytest.raises(KeyFormatError) as e:
        KeyRing.from_file(f)
    assert good not in str(e.value) and e.value.__cause__ is None


def test_key_ring_formats(tmp_path, monkeypatch):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    lines = KeyRing.parse(f"{a.reveal()}\nbob@active {b.reveal_wif()}  # comment\n")
    assert set(lines.public_keys()) == {a.public_key, b.public_key}
    assert lines.public_key_for("bob@active") == b.public_key
    as_json = KeyRing.parse(f'{{"alice@operate": "{a.reveal()}", "bob@active": "{b.reveal()}"}}')
    assert as_json.public_key_for("alice@operate") == a.public_key
    as_list = KeyRing.parse(f'["{a.reveal()}"]')
    assert a.public_key in as_list and len(as_list) == 1
    monkeypatch.setenv("BOID_CHAIN_KEYS", f"{a.reveal()};{b.reveal()}")
    assert len(KeyRing.from_env()) == 2
    with pytest.raises(KeyFormatError, match="not set"):
        KeyRing.from_env("NO_SUCH_VAR_HOPEFULLY")
    path = tmp_path / "ring.json"
    as_json.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = KeyRing.from_file(path)
    assert again.labels == as_json.labels


def test_sign_with_ring_uses_requested_keys():
    a = PrivateKey.generate()
    ring = KeyRing([a])
    digest = hashlib.sha256(b"x").digest()
    (sig,) = ring.sign(digest, [a.public_key])
    assert recover_public_key(digest, sig) == a.public_key
    with pytest.raises(KeyError):
        ring.sign(digest, [DEV_PUB])
