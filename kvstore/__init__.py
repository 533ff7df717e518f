"""kvstore: agent-aware KV-cache tiering across GPU HBM, host DRAM and local disk.

Importing this package stays light (no torch): the SDK and `kvstore.hashing` build on it.
"""

__version__ = "0.1.0"
