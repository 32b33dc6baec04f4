"""Subcommands of the diffkit CLI, one module each (discovered by diffkit.cli)."""
