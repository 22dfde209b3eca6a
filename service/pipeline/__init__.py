"""The request path of the served models, below the APIs and above Triton's client: ServedModel
(inference.py: buckets, token budget, tokenizer threads, the padded and coalesced backend calls) and its two
kinds, Embedder (embedder.py) and Reranker (reranker.py); the pure steps they string together (params,
templating, tokenization, truncation, batching, postprocess, encoding); and the backend ports they call
(backend.py)."""
