"""Learning on stored features: normalisers and reducers, classifiers and their tuning, the model
bundle, metrics and prediction."""
