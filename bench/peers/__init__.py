"""One module per peer: its tasks (all calling bench_common.run) and how to enqueue one."""
