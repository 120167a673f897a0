"""The names of the slide-level losses, importable without torch: the Snakemake workflow checks
its config with them each time it parses, once per job. Each name is registered by one module
of :mod:`wsi_ncmi.model.losses`, whose ``register`` refuses a name missing here."""

LOSS_NAMES = ("ce", "cmi_ce", "focal", "label_smoothing", "ncmi", "opl", "square",
              "squentropy", "supcon")
