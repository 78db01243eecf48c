"""The operator's EOSIO/Antelope chain adapter: RPC, client-side ABI serialization, K1 signing."""
