"""`telemetry certs`: make a CA, a collector certificate and device certificates for TLS."""

from __future__ import annotations

from pathlib import Path

import click

from collector import certs as _certs
from collector.errors import ConfigError
from collector.storage.interface import DeviceError, check_name

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Folder holding ca.pem and ca.key; new files are written here.",
)


@click.group("certs")
def certs() -> None:
    """Create TLS certificates for a small deployment (ECDSA P-256, signed by your own CA).

    \b
    Typical use:
      telemetry certs ca
      telemetry certs collector --host collector.example.org --host 10.0.0.5
      telemetry certs device greenhouse-1
    Copy ca.pem to every device; the collector uses collector.pem/.key (and ca.pem to
    verify device certificates when mutual TLS is on); each device gets its own NAME.pem/.key,
    whose Common Name must equal its device id.
    """


@certs.command("ca")
@_DIR
@click.option("--name", default="telemetry CA", show_default=True, help="CA common name.")
def ca_cmd(directory: Path, name: str) -> None:
    """Create a new certificate authority (ca.pem, ca.key). Refuses to overwrite one."""
    try:
        issued = _certs.create_ca(directory, name)
    except _certs.CertError as exc:
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {issued.cert} and {issued.key} (keep the key private)")


@certs.command("collector")
@_DIR
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="DNS name or IP address agents connect to (repeat for several).",
)
@click.option("--name", default="collector", show_default=True, help="File name stem.")
def collector_cmd(directory: Path, hosts: tuple[str, ...], name: str) -> None:
    """Issue the collector's server certificate for the given host names / addresses."""
    try:
        issued = _certs.issue(directory, name, server=True, hosts=hosts)
    except _certs.CertError as exc:
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {issued.cert} and {issued.key} for {', '.join(hosts)}")


@certs.command("device")
@_DIR
@click.argument("device_id")
def device_cmd(directory: Path, device_id: str) -> None:
    """Issue a client certificate whose Common Name is DEVICE_ID (for mutual TLS)."""
    try:
        check_name(device_id)
        issued = _certs.issue(directory, device_id, server=False)
    except (_certs.CertError, DeviceError) as exc:
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {issued.cert} and {issued.key}")
