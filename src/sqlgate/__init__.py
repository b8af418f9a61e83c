"""sqlgate: safe, audited MCP access to SQL data."""

__version__ = "0.1.0"
