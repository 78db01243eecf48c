"""The operator's EOSIO/Antelope chain adapter: RPC, client-side ABI serialization, K1 signing.

Re-exports the public API so callers need one import: `from boidcluster.adapters.chain import ...`.
"""

from .abi import Abi, AbiError, abi_to_bin, int_to_name, name_to_int
from .boid import (
    AcctRow,
    BatchOutOfSequence,
    ContributorNotRegistered,
    BatchSeqRow,
    BoidChain,
    ChainAuth,
    EscrowTooLow,
    ContributorRow,
    PayoutResult,
    ProtocolRow,
    ProtocolTerms,
    RecordResult,
    UnitTime,
    credit,
    payment,
    unit_id,
)
from .keys import KeyFormatError, KeyRing, PrivateKey
from .rpc import (
    ChainAssertion,
    ChainError,
    ChainUnavailable,
    DuplicateTransaction,
    MissingAuthority,
    NotFound,
    ResourceExhausted,
    RpcClient,
    TransactionExpired,
    action,
)

__all__ = [
    "Abi", "AbiError", "abi_to_bin", "int_to_name", "name_to_int",
    "AcctRow", "BatchOutOfSequence", "ContributorNotRegistered", "BatchSeqRow", "EscrowTooLow", "BoidChain", "ChainAuth", "ContributorRow", "PayoutResult",
    "ProtocolRow", "ProtocolTerms", "RecordResult", "UnitTime", "credit", "payment", "unit_id",
    "KeyFormatError", "KeyRing", "PrivateKey",
    "ChainAssertion", "ChainError", "ChainUnavailable", "DuplicateTransaction", "MissingAuthority", "NotFound",
    "ResourceExhausted", "RpcClient", "TransactionExpired", "action",
]
