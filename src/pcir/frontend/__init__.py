"""pcir.frontend."""
