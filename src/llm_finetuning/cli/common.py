"""What every verb shares: the console, logging set-up, and turning user mistakes into short messages."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

from llm_finetuning.errors import UserError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Rich logging to stderr; `quiet` (the other processes of a multi-process run) keeps warnings only."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False, markup=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("llm_finetuning").setLevel(level)
    # bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional downloaded kernel is missing; the
    # built-in kernel works, and the download is not possible offline anyway.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; a user can do nothing
    # about it, so the CLI does not show it.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # Libraries below us are chatty at INFO; keep their warnings.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(func: F) -> F:
    """Show a `UserError` as one short message and exit 2, without a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)
        except EOFError as exc:
            # click would print only "Aborted!" for it, as for Ctrl-C; say what ended early instead.
            err_console.print(
                f"[bold red]error:[/] unexpected end of input (EOFError: {escape(str(exc)) or 'no detail'}); a "
                "file or stream ended before it should have",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def masked_text(encoded: Any, tokenizer: Any) -> Text:
    """An encoded example as text, the tokens that carry loss in bold green and the rest dimmed."""
    from llm_finetuning.check.report import loss_spans

    text = Text()
    for piece, trained in loss_spans(encoded, tokenizer):
        text.append(piece, style="bold green" if trained else "dim")
    return text
