"""Embedding and retrieval evaluation: the Embedder, BEIR sets, IR metrics, BM25, mteb."""
