"""Learning on stored features: probing backbones, layers and poolings (probe.py), auditing the data (audit.py)."""
