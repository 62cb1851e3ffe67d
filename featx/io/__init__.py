"""Where images and files come from and go to: input sources (folders, manifests, globs), safe
reading and decoding, crash-safe writes, thumbnails and the small cache featx keeps between runs.
Nothing here imports torch."""
