"""Slide access, pyramid levels, tissue, tile grid, tile readers, previews, synthetic slides
and cohorts."""
