"""Training: the Lightning trainer, optimizer and exact-resume helpers, LM training, one LightningModule per model."""
