"""pcir.passes."""
