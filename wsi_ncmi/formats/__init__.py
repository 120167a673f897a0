"""File formats, one owner each: manifests and the slide-id check, cohort builders, the tile
file, the feature file, the run folder, the review page."""
