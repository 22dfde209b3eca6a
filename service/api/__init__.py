"""The two public APIs (gRPC and OpenAI-compatible HTTP) over one pipeline."""
