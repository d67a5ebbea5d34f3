"""Merging, model merging and export."""
