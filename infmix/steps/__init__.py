"""Pure per-image operations: decode, convert to 8-bit grayscale, crop/resize, encode."""
