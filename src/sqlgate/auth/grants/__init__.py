"""OAuth state with atomic operations: the GrantStore interface (base.py) and one module per backend."""
