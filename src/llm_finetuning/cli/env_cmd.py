"""`llmft env`: the version matrix, the device and the optional extras."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from llm_finetuning.cli.common import console
from llm_finetuning.env import device_info, extras, package_versions


def env(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print package versions, the device, and which optional extras are installed."""
    versions, device, optional = package_versions(), device_info(), extras()
    if as_json:
        console.print_json(json.dumps({"versions": versions, "device": device, "extras": optional}))
        return
    table = Table(title="packages", header_style="bold")
    table.add_column("package")
    table.add_column("version")
    for name, version in versions.items():
        table.add_row(name, version)
    console.print(table)
    table = Table(title="device", header_style="bold")
    table.add_column("property")
    table.add_column("value")
    for key, value in device.items():
        table.add_row(key, str(value))
    console.print(table)
    table = Table(title="optional extras", header_style="bold")
    for column in ("extra", "installed", "enables"):
        table.add_column(column)
    for name, info in optional.items():
        mark = f"[green]{info['version']}[/]" if info["installed"] else "[dim]no[/]"
        table.add_row(name, mark, info["enables"])
    console.print(table)
