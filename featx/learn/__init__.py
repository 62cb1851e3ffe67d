"""Learning on stored features: tuning classifiers (tune.py), probing backbones, layers and poolings
(probe.py), auditing the data (audit.py)."""
