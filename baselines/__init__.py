"""Baseline strategies, one file each; every module here is imported by the strategy registry."""
