"""The same-host data plane: host memory tiers in POSIX shared memory, mapped by clients.

- header.py: the segment header clients check (torch-free: the SDK imports it);
- segments.py: the segments the server creates, pre-faults and unlinks;
- leases.py: who may write and read which slot when (Reserve/Commit, Acquire/Release).

Nothing is imported here, so the SDK can import `kvstore.shm.header` without torch.
"""
