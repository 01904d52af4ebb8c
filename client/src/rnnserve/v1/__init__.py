"""Generated gRPC stubs for `rnnserve.v1` (regenerate with `make proto`; never edit by hand)."""
