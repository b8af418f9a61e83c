"""Audit trail: one structured event per tool call, resource read and prompt render."""
