"""One short orchestrator per command, the slide-job machinery (jobs, ledger, runner) and
provenance records."""
