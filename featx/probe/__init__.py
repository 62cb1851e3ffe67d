"""`featx probe`: which backbone, layer, pooling and classifier suit the user's images — the
candidates, one multi-pooled pass per backbone, honest scoring, domain shift and the plots."""
