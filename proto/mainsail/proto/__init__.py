"""Generated gRPC stubs of Mainsail's wire contract (source: v1/mainsail.proto)."""
