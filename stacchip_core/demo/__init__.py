"""The synthetic archive and the demo. Never imported by production code."""
