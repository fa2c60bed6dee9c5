"""Generated protobuf/gRPC code (``make proto`` regenerates it from distree.proto)."""
