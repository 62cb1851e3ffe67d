"""A self-contained HTML page of search results: each query's thumbnail and its neighbours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featx.io.thumbnails import escape, thumbnail_uri

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.query{display:flex;gap:12px;align-items:flex-start;border-bottom:1px solid #ddd;padding:10px 0}
figure{margin:0;width:110px;font-size:11px;text-align:center;word-break:break-all}
figure img{width:96px;height:96px;object-fit:cover;border-radius:4px}
.q img{outline:3px solid #1f77b4}.err{color:#b00}
.same{color:#080}.diff{color:#b00}
"""


def render_search_page(results: pd.DataFrame, title: str, query_labels: dict | None = None,
                       thumbnail_size: int = 96) -> str:
    """`results`: rows of Index.search (query, rank, path, label, score, status, error)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"{search_blocks(results, query_labels, thumbnail_size)}</body></html>")


def search_blocks(results: pd.DataFrame, query_labels: dict | None = None, thumbnail_size: int = 96) -> str:
    """One row of thumbnails per query: the query, then its neighbours with rank, score and label."""
    cache: dict[str, str] = {}

    def thumb(path: str) -> str:
        if path not in cache:
            cache[path] = thumbnail_uri(path, thumbnail_size)
        return cache[path]

    blocks = []
    for query, rows in results.groupby("query", sort=False):
        first = rows.iloc[0]
        q_label = (query_labels or {}).get(query)
        head = (f'<figure class="q"><img src="{thumb(query) if Path(str(query)).exists() else ""}" alt="query">'
                f'<figcaption><b>query</b><br>{escape(Path(str(query)).name)}'
                f'{"<br>" + escape(q_label) if q_label else ""}</figcaption></figure>')
        if first["status"] != "ok":
            blocks.append(f'<div class="query">{head}<p class="err">{escape(first["status"])}: '
                          f'{escape(first["error"])}</p></div>')
            continue
        cells = []
        for row in rows.itertuples(index=False):
            mark = "" if q_label is None else (' class="same"' if row.label == q_label else ' class="diff"')
            cells.append(f'<figure><img src="{thumb(row.path)}" alt=""><figcaption>#{int(row.rank)} '
                         f'{row.score:.3f}<br><span{mark}>{escape(row.label)}</span></figcaption></figure>')
        blocks.append(f'<div class="query">{head}{"".join(cells)}</div>')
    return "".join(blocks)
