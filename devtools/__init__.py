"""Developer tools that stay out of the serving wheel: the load generator (`qwen3-embed bench`), the one
facade launcher for tests, benchmarks and the soak script, and the gRPC stub generator (`make proto`)."""
