"""Authentication and identity."""
