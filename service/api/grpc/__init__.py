"""The gRPC API (embedding.v1.EmbeddingService of proto/): the servicer and its wire code, and the server that
assembles it with health, reflection, auth, limits and TLS."""
