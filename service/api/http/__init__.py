"""The HTTP API: OpenAI embeddings, Cohere / Jina and TEI rerank, models, health, metrics and /info, on
uvicorn. schemas.py holds the request and response shapes, wire.py the body reading, errors and JSON."""
