"""Running studies: the command line, the runner, comparing runs and the report."""
