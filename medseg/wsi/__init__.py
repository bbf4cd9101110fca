"""Whole-slide classification: tissue detection, tiling, tile features, MIL bags, heatmaps."""
