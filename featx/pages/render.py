"""Render a page from a Jinja2 template shipped in featx/pages/templates, autoescaped; pages are
self-contained (plots are embedded as base64 PNG data URIs) so they work offline and when moved."""

from __future__ import annotations

import base64
from functools import lru_cache


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("featx.pages", "templates"),
                              autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
    environment.filters["num"] = lambda value, digits=3: ("–" if value is None or value != value  # None or NaN
                                                          else f"{value:.{digits}f}")
    environment.filters["png_uri"] = lambda data: "data:image/png;base64," + base64.b64encode(data).decode()
    return environment


def render_page(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)
