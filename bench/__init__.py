"""`actstream bench`: the product's figures beside the naive loop, measured in one run."""
