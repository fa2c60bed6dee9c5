"""The distributed runtime: device workers and a coordinator talking gRPC."""
