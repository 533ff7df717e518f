"""Generated gRPC stubs for protos/kvstore/v1 (regenerate with `python protos/generate.py`)."""
