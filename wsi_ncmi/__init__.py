"""wsi-ncmi: whole-slide images to slide-level subtype predictions.

Stages (each a plain function here and a command in :mod:`wsi_ncmi.cli`):
tile → extract → train → eval, plus ``predict`` for new slides.
"""

__version__ = "0.1.0"
