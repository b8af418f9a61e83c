"""Built-in schema exploration and read-only query tools."""
