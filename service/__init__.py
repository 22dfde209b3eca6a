"""Qwen3-Embedding service: gRPC + OpenAI-compatible facade in front of Triton."""

__version__ = "0.1.0"
