"""Audit trail: one structured event per tool call, resource read, prompt render and authorization step.

events.py (the record, masking, SQL fingerprint) · notes.py (what a running call reports) ·
middleware.py (MCP calls) · http.py (request ids, HTTP refusals) · record.py (emit; auth events) ·
writer.py (bounded queue, background thread) · sinks.py (JSON lines, SQLite, PostgreSQL) ·
setup.py (from settings) · query.py and logview.py (`sqlgate log`).
"""
