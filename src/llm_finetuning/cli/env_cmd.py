"""`llmft env`: the version matrix, the device and the optional extras."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from llm_finetuning.cli.common import console
from llm_finetuning.env import device_info, extras, fast_path_info, package_versions


def env(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print package versions, the device, the installed optional extras, and the fast path training takes here."""
    versions, device, optional, fast = package_versions(), device_info(), extras(), fast_path_info()
    if as_json:
        payload = {"versions": versions, "device": device, "extras": optional, "fast_path": fast}
        console.print_json(json.dumps(payload, default=str))
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
    table = Table(title="fast path (SFT with the default settings, on this device)", header_style="bold")
    table.add_column("choice")
    table.add_column("value (why)")
    for what, choice in fast["sft_defaults"].items():
        table.add_row(what, choice)
    console.print(table)
