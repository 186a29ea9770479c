"""Training datasets (DPO, KTO, SFT) built from completion and feedback events."""
