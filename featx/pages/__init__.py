"""HTML pages rendered from package templates (featx/pages/templates)."""
