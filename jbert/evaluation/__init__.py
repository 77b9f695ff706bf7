"""Embedding and retrieval evaluation: the Embedder, BEIR sets, IR metrics, BM25, bootstrap
intervals, mteb, and sentence-transformers models as baselines and teachers."""
