"""`python -m agents` is `telemetry agent`, with the same one-line errors and exit code 2."""

from agents.cli import main

if __name__ == "__main__":
    main()
