"""One module per `panseg-rt` subcommand."""
