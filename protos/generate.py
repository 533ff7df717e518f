"""Regenerate the committed Python stubs from protos/: `python protos/generate.py`.

The stubs live in kvstore/v1/ and are committed; tests/test_protos.py regenerates them into a
temporary folder and fails if they differ, so the contract and the code cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTOS = sorted(PROTO_ROOT.glob("kvstore/v1/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir; return them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(out_dir.glob("kvstore/v1/*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(REPO_ROOT)
    print("\n".join(str(p.relative_to(REPO_ROOT)) for p in written))
    sys.exit(0)
