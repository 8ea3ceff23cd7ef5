"""The worker side: who is registered (`registry`), how requests reach them (`transport`,
`worker_stream`), their KV events (`kv_events`) and per-pool load for the autoscaler
(`pool_load`). Knows nothing of routing, scheduling or the KV index's internals."""
