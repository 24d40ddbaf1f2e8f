"""pcir.backend."""
