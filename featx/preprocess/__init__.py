"""The one image → network input contract: the weights' preprocessing (`config.Preprocess`), the
views in each resize mode and TTA (`views`, with their torch-free Pillow half in `pil`), decoding on
the device (`device`), and `contract.network_input`, which every path that feeds the network calls."""
