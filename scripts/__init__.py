"""The `vitrina` command line: cli.py and one thin module per subcommand (the shell scripts sit beside them)."""
