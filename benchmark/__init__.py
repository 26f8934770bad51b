"""Multi-exit training benchmark for pretrained transformer encoders."""
