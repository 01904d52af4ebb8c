"""Generated from proto/inference (the KServe v2 / Triton protocol) by `make proto`: the
server's side of it, which the client package does not need."""
