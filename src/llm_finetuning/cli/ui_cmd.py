"""`llmft ui`: the web UI (Gradio) over a folder of runs."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors
from llm_finetuning.errors import UserError


@user_errors
def ui(
    folder: Path = typer.Option(Path("runs"), "--runs", help="Folder of run directories (configs and logs go here)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs a password."),
    port: int = typer.Option(7860, help="Port (0: any free one)."),
    password: str = typer.Option(
        None, envvar="LLMFT_UI_PASSWORD", help="Password for the login page (or LLMFT_UI_PASSWORD); user `llmft`."
    ),
) -> None:
    """Configure, launch and watch runs from a browser."""
    setup_logging()
    from llm_finetuning.serve.server import is_loopback

    if not is_loopback(host) and not password:
        raise UserError(
            f"serving the UI on {host} (beyond this machine) needs a password: pass --password or LLMFT_UI_PASSWORD"
        )
    try:
        from llm_finetuning.ui.app import CSS, build
    except ImportError as exc:
        raise UserError(f"llmft ui needs the `ui` extra: pip install 'llm-finetuning[ui]' ({exc})") from None
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    app = build(folder)
    auth = (lambda user, given: user == "llmft" and given == password) if password else None
    _, url, _ = app.launch(
        server_name=host,
        server_port=port or None,
        auth=auth,
        prevent_thread_lock=True,
        quiet=True,
        css=CSS,
        show_error=True,
    )
    console.print(f"llmft ui on [bold]{url}[/] over {folder} (Ctrl-C stops the UI; runs keep going)")
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        app.llmft_sessions.close()
