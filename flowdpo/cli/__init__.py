"""The `flowdpo` command line: `main` (one parser, one table of exit codes), `common` (what subcommands
share), and one module per group of subcommands: `run`, `cluster`, `compile`."""
