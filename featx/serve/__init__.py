"""`featx serve`: a long-lived HTTP service over loaded models, indexes and stores.

app.py (FastAPI routes), batching.py (micro-batcher: one forward pass for concurrent requests),
registry.py (the loaded artifacts, swapped atomically), jobs.py (extract jobs). Import
`featx.serve.app.create_app` to embed it."""
