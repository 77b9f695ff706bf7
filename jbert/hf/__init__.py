"""Hugging Face compatibility: the key map, loading released checkpoints, saving exports."""
