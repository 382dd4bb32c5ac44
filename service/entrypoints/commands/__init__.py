"""The CLI's commands, one module per family; `service.entrypoints.cli` parses the
arguments and calls them."""
