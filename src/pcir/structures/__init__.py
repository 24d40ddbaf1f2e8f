"""pcir.structures."""
