"""Statistics: splits, metrics, bootstrap intervals, simplex geometry, plots, reports."""
