"""The exit codes every command uses (the help text and docs/cli.md list the same)."""

OK, NOT_FOUND, USAGE, UNAVAILABLE = 0, 1, 2, 3
EXIT_CODES = {
    OK: "done",
    NOT_FOUND: "not found (lot, intent); `scheduler --check`: no fresh heartbeat",
    USAGE: "bad configuration or usage (unknown tenant, missing keys or token, input the "
    "API refused)",
    UNAVAILABLE: "Redis, Koban or the API unavailable, Koban answered an error, or a sync "
    "of the tenant is already running",
}
