"""Learning on stored features: tuning classifiers (tune.py), probing backbones, layers and poolings (probe.py)."""
