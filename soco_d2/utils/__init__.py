"""Small helpers with no Detectron2 dependency: atomic file writes (atomic_io.py)."""
