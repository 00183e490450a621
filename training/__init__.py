"""Hardware-aware PyTorch training and Monte-Carlo transfer evaluation (needs the [train] extra)."""
