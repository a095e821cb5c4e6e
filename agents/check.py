"""`telemetry agent --check-config` beyond parsing: what would only fail once the agent runs.

Parsing (`agents.config`) and building every input (`agents.runner.build_inputs`) already
refuse a bad key. What they cannot see without looking at the machine:
* a `command` input whose program is not found or not executable (every sample would fail);
* an input `kind` that is not a built-in kind: a misspelling would have every reading
  rejected by the collector. Kinds from the collector's kinds file are accepted when that
  file is given (`--kinds FILE`); the agent never needs it to run.
`describe` is the summary printed when all is well. Reads only the files it is given and
looks programs up on PATH; no sockets, no spool.
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

from agents.config import AgentConfig, AgentConfigError
from agents.runner import build_inputs
from agents.sources import KINDS
from agents.sources.command import CommandSource
from schemas.kinds import KindFileError, load_kinds_file


def problems(cfg: AgentConfig, *, kinds_file: Path | None = None) -> list[str]:
    """One line per problem found; empty when the config should run as written."""
    out: list[str] = []
    known = set(KINDS)
    if kinds_file is not None:
        try:
            known |= {k.name for k in load_kinds_file(kinds_file)}
        except KindFileError as exc:
            out.append(f"--kinds: {exc}")
    prefix = f"{cfg.source_file}: " if cfg.source_file is not None else ""
    try:
        built = build_inputs(cfg)
    except AgentConfigError as exc:
        return [*out, str(exc)]
    for inp, src in built:
        where = f"{prefix}{inp.label}"
        if inp.kind is not None and inp.kind not in known:
            close = difflib.get_close_matches(inp.kind, sorted(KINDS), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(
                f"{where}, key 'kind': {inp.kind!r} is not a built-in kind{hint}; for a kind "
                "defined in the collector's kinds file, check with --kinds FILE"
            )
        if isinstance(src, CommandSource):
            problem = _program_problem(src.argv[0])
            if problem:
                out.append(f"{where}, key 'command': {problem}")
    return out


def _program_problem(program: str) -> str:
    if "/" in program:
        path = Path(program)
        if not path.is_file():
            return f"program {program} not found"
        if not os.access(path, os.X_OK):
            return f"program {program} is not executable"
        return ""
    if shutil.which(program) is None:
        return f"program {program!r} not found on PATH"
    return ""


def describe(cfg: AgentConfig, path: Path) -> str:
    """The effective config in a few lines a person reads (never the token)."""
    t = cfg.tls
    tls = "TLS off"
    if t.enabled:
        tls = f"TLS on, checking {t.server_name or cfg.host}"
        tls += f" against {t.ca_file}" if t.ca_file else " against the system trust store"
        if t.cert_file is not None:
            tls += f", client certificate {t.cert_file}"
    metrics = "off" if cfg.metrics_interval_s is None else f"every {cfg.metrics_interval_s:g}s"
    lines = [
        f"{path}: ok",
        f"  device       {cfg.device_id} -> collector "
        f"{', '.join(f'{h}:{p}' for h, p in cfg.addresses)} ({tls})",
        f"  spool        {cfg.spool_path}  (at most {cfg.spool_max_readings} readings, "
        f"{cfg.spool_policy} when full)",
        f"  batches      up to {cfg.batch_max_readings} readings, sent within "
        f"{cfg.batch_max_delay_s:g}s",
        f"  own metrics  {metrics}",
        f"  inputs       {len(cfg.inputs)}",
    ]
    width = max((len(i.label) for i in cfg.inputs), default=0)
    for inp, src in build_inputs(cfg):
        names = inp.name or ", ".join(inp.names) or "(named by the source)"
        parts = [inp.label.ljust(width), names]
        if inp.kind:
            parts.append(inp.kind)
        parts.append(f"every {inp.interval_s:g}s")
        if isinstance(src, CommandSource):
            parts.append("runs " + " ".join(src.argv))
        lines.append("    " + "  ".join(parts))
    return "\n".join(lines)
