"""`python -m collector` is `telemetry`."""

from collector.cli import main

if __name__ == "__main__":
    main()
