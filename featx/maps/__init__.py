"""2-D / 3-D maps of stored features (`project`: PCA, t-SNE, UMAP) and placing new images on a
saved map (`placement`)."""
