"""Recipes: a YAML file that chains the steps (`recipe`: schema from `featx.options`), and `run`,
which runs them, skipping steps whose inputs and options did not change."""
