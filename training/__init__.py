"""Teaching models from recordings: datasets, the training loops, the shipped recipe."""
