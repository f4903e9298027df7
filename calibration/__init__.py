"""INT8 calibration of the encoders (see README: not built yet)."""
