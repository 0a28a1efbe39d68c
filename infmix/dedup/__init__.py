"""Duplicate removal between processing and sharding: exact (same stored image), then near (same
picture: embeddings, faiss search, connected components). `stages.deduplicate` runs them."""
