"""Models: one registry for the tutorials' networks, the small-image default and every timm architecture."""
