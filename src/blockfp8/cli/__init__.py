"""Command line: `blockfp8 <subcommand>`; each subcommand module imports its heavy modules lazily."""
