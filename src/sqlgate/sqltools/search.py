"""Keyword search over tables, views and columns: names and comments, BM25-ranked.

Names count more than comments; an exact name match ranks first. Identifiers are split on
underscores and camelCase so "customer orders" finds `customerOrders` and `customer_orders`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

_SPLIT = re.compile(r"[^0-9A-Za-z]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
K1, B = 1.2, 0.75
NAME_WEIGHT, CONTEXT_WEIGHT, COMMENT_WEIGHT = 3, 1, 1


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokens(text: str | None) -> list[str]:
    if not text:
        return []
    out = []
    for part in _SPLIT.split(text):
        for piece in _CAMEL.split(part):
            if piece:
                out.append(_stem(piece.lower()))
    return out


def _document(entry: dict[str, Any]) -> Counter:
    doc: Counter = Counter()
    for t in tokens(entry["name"]):
        doc[t] += NAME_WEIGHT
    for t in tokens(entry.get("comment")):
        doc[t] += COMMENT_WEIGHT
    if entry.get("table"):
        for t in tokens(entry["table"]):
            doc[t] += CONTEXT_WEIGHT
    return doc


def search(entries: list[dict[str, Any]], query: str, limit: int) -> list[dict[str, Any]]:
    terms = list(dict.fromkeys(tokens(query)))
    if not terms:
        return []
    docs = [_document(e) for e in entries]
    n = len(docs) or 1
    avg_len = sum(sum(d.values()) for d in docs) / n or 1.0
    df = {t: sum(1 for d in docs if t in d) for t in terms}
    query_name = "_".join(terms)
    scored = []
    for entry, doc in zip(entries, docs, strict=True):
        length = sum(doc.values())
        score = 0.0
        matched = []
        for t in terms:
            tf = doc.get(t, 0)
            if not tf:
                continue
            matched.append(t)
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avg_len))
        if not score:
            continue
        if "_".join(tokens(entry["name"])) == query_name:
            score *= 2  # the whole query is this object's name
        hit = {k: v for k, v in entry.items() if v is not None}
        hit["score"] = round(score, 3)
        hit["matched"] = matched
        scored.append(hit)
    scored.sort(key=lambda h: (-h["score"], h["kind"] == "column", h["name"]))
    return scored[:limit]
