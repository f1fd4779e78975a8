"""From the index to model input: chip reads, pre-cut cubes, band statistics, datasets."""
