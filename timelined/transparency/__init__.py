"""Verifiable history (issue 19): RFC 6962 Merkle trees over the log's lines, C2SP signed notes
and tlog checkpoints, and the client-side check that a new checkpoint extends a remembered one.

Pure: it imports nothing of timelined but the shared vocabulary (errors), so the client,
timelinectl and the daemon share it. The persistent tree the daemon keeps is `timelined.treestore`.
"""
