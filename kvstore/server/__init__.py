"""gRPC adapters: proto <-> Store calls, validation and error mapping, health, reflection."""
