"""Local stand-ins for the remote APIs and the traffic they serve (demo, tests, benchmarks)."""
