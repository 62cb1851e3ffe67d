"""Execution engines that run featx's per-shard worker (`featx.worker`) somewhere else than the
current process. Each engine is imported only when chosen, so `import featx` never imports Ray."""
