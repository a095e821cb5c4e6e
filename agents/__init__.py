"""The device agent: sources -> spool -> transport, streaming readings to a collector.

Imports only the standard library, msgpack and `schemas.wire`/`schemas.errors`/
`schemas.kinds` (psutil optionally for the `system` source, click only in `agents.cli`), so a
device runs it without the collector's dependencies. It never imports `collector`.

    config.py     the TOML file -> AgentConfig
    sources/      one module per source, registered by name
    spool.py      the durable, bounded on-disk queue
    transport.py  the TCP client driving `schemas.wire.Connection`
    runner.py     sources -> spool -> transport, and the dry run
    api.py        `Agent.record(...)` for user code
    cli.py        `telemetry agent` / `python -m agents`
"""

from __future__ import annotations

AGENT_NAME = "telemetry-agent"
# Kept equal to pyproject's version by tests/agents/test_footprint.py: importlib.metadata
# would cost the device ~1 MB of RSS just to say this in HELLO.
__version__ = "0.1.0"
