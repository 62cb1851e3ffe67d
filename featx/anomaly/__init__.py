"""Anomaly detection from normal images only, on frozen features: an image-level memory bank (mean
distance to the k nearest normal vectors, `memory`) and a PatchCore patch-level one (`patches`),
a threshold calibrated on held-out normals with its evaluation (`calibrate`), heatmap overlays
(`heatmap`) and the saved model (`model`)."""
