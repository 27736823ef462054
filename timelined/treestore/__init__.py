"""The daemon's side of verifiable history (issue 19): the Merkle tree over the log kept on disk
beside the writer, the signing key and the signed checkpoints. The hashing, proofs and note
format are `timelined.transparency`'s (shared with the client)."""
