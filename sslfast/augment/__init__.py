"""Random-field and SSL view augmentations."""
