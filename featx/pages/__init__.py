"""Web pages: Jinja2 templates and static files (package data)."""
