"""`featx audit`: one module per kind of issue (label issues, duplicates and leakage, outliers, data
size) and `audit.py`, which runs them over a store."""
