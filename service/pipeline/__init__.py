"""The request path's pure steps (templating, tokenization, truncation, bucketing, MRL, encoding) and the
Embedder that strings them together around Triton calls."""
