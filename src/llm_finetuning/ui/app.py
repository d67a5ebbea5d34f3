"""`llmft ui`: the Gradio app. Widgets and wiring only; what they do lives in `form`, `runs` and `jobs`, which call
the same functions as the CLI (the config loader and schema, `llmft train` itself as the process that trains).

Pages: New run (recipe or blank, the schema's fields by section, the YAML beside them, validation at the field,
launch) and Runs (the run directories under the folder with their status, curves of one run or several, stop and
resume, the log).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from llm_finetuning.errors import UserError
from llm_finetuning.export.lora_merge import merge_run
from llm_finetuning.export.run_export import GGUF_TYPES
from llm_finetuning.export.run_export import export_run as export_run_files
from llm_finetuning.recipes.catalog import all_recipes, find_recipe, merged
from llm_finetuning.ui import chat, form, jobs, runs_view
from llm_finetuning.ui import preview as preview_mod
from llm_finetuning.ui import runs as runs_mod

logger = logging.getLogger(__name__)

SECTION_TITLES = {
    "model": "Model",
    "adapter": "Adapter",
    "data": "Data",
    "method": "Method",
    "training": "Training",
    "eval": "Evaluation",
    "tracking": "Tracking",
    "distributed": "Distributed",
    "output_dir": "Output",
}
OPEN_SECTIONS = {"model", "adapter", "data", "method", "training", "output_dir"}
CSS = ".llmft-error textarea, .llmft-error input { border-color: #d33 !important; }"


def elem_id(key: str) -> str:
    """A DOM id for a field: tests and screenshots find fields by it."""
    return "field-" + re.sub(r"[^A-Za-z0-9_-]", "-", key)


def _initial(field: form.Field) -> Any:
    if field.kind == "yaml":
        return "" if field.default is None else form.yaml_text(field.default)
    return field.default


def _widget(field: form.Field, visible: bool) -> Any:
    common = {"label": field.key, "info": field.description or None, "elem_id": elem_id(field.id), "visible": visible}
    value = _initial(field)
    if field.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if field.kind == "choice":
        choices = list(field.choices) + ([""] if field.nullable else [])
        return gr.Dropdown(choices=choices, value=value if value is not None else "", **common)
    if field.kind in ("int", "float") and value is not None:  # a number input cannot be empty: null ones are text
        return gr.Number(value=value, precision=0 if field.kind == "int" else None, **common)
    return gr.Textbox(value="" if value is None else str(value), lines=1, max_lines=6, **common)


def _visibility(fields: list[form.Field], values: dict[str, Any]) -> list[bool]:
    tags = form.tag_fields(fields)
    return [form.active(f, values, tags) for f in fields]


def build(folder: Path) -> gr.Blocks:
    """The app over the run folder `folder` (configs and logs are written there; runs are found under it)."""
    folder = Path(folder)
    sessions = chat.Sessions()
    fields = form.fields()
    keys = [f.id for f in fields]
    recipe_names = ["(blank)"] + [r.name for r in all_recipes()]

    with gr.Blocks(title="llmft") as app:
        gr.Markdown("# llmft")
        with gr.Tab("New run", id="new-run"):
            with gr.Row():
                recipe = gr.Dropdown(recipe_names, value="(blank)", label="Start from a recipe", elem_id="recipe")
                name = gr.Textbox(value="my-run", label="Run name (the config file's name)", elem_id="run-name")
            with gr.Row():
                with gr.Column(scale=3):
                    widgets: list[Any] = []
                    shown = dict(zip(keys, _visibility(fields, form.defaults(fields)), strict=True))
                    for section in SECTION_TITLES:
                        members = [f for f in fields if f.section == section]
                        if not members:
                            continue
                        with gr.Accordion(SECTION_TITLES[section], open=section in OPEN_SECTIONS):
                            for field in members:
                                widgets.append(_widget(field, shown[field.id]))
                with gr.Column(scale=2):
                    config_yaml = gr.Code(language="yaml", label="config YAML", elem_id="config-yaml")
                    status = gr.Markdown(elem_id="form-status")
                    with gr.Row():
                        validate_button = gr.Button("Validate", elem_id="validate")
                        save_button = gr.Button("Save YAML", elem_id="save")
                        launch_button = gr.Button("Launch", variant="primary", elem_id="launch")
                    launched = gr.Markdown(elem_id="launched")
                    preview_button = gr.Button("Preview data (llmft check)", elem_id="preview")
                    preview_examples = gr.HighlightedText(
                        label="examples: highlighted text carries loss",
                        color_map={"loss": "green"},
                        show_legend=True,
                        combine_adjacent=True,
                        elem_id="preview-examples",
                    )
                    preview_figures = gr.Markdown(elem_id="preview-figures")

        def values_of(args: tuple[Any, ...]) -> dict[str, Any]:
            return dict(zip(keys, args, strict=True))

        def refresh(*args: Any) -> list[Any]:
            values = values_of(args)
            try:
                data = form.config_data(values, fields)
            except form.FormError as exc:
                return [gr.update(), f"**{exc.key}**: {exc.message}"] + [
                    gr.update(visible=v) for v in _visibility(fields, values)
                ]
            return [form.to_yaml(data), ""] + [gr.update(visible=v) for v in _visibility(fields, values)]

        def marked(values: dict[str, Any]) -> tuple[list[Any], list[tuple[str, str]], dict[str, Any]]:
            data, found = form.problems(values, fields)
            at: dict[str, list[str]] = {}
            general = []
            for key, message in found:
                target = form.field_for(key, fields)
                if target is None:
                    general.append((key, message))
                else:
                    at.setdefault(target.id, []).append(f"{key}: {message}" if key != target.key else message)
            updates = []
            for field in fields:
                if field.id in at:
                    updates.append(gr.update(info="problem: " + "; ".join(at[field.id]), elem_classes=["llmft-error"]))
                else:
                    updates.append(gr.update(info=field.description or None, elem_classes=[]))
            return updates, found, data

        def summary(found: list[tuple[str, str]]) -> str:
            if not found:
                return "**valid**: `llmft train` accepts this config"
            lines = "\n".join(f"- `{key}`: {message}" for key, message in found)
            return f"**{len(found)} problem{'s' if len(found) > 1 else ''}**:\n{lines}"

        def validate(*args: Any) -> list[Any]:
            updates, found, _ = marked(values_of(args))
            return [summary(found), *updates]

        def save(run_name: str, *args: Any) -> str:
            try:
                data = form.config_data(values_of(args), fields)
                path = jobs.write_config(folder, run_name, form.to_yaml(data))
            except (form.FormError, UserError) as exc:
                return f"**error**: {exc}"
            return f"saved `{path}`: `llmft train {path}` trains it"

        def launch(run_name: str, *args: Any) -> list[Any]:
            values = values_of(args)
            updates, found, data = marked(values)
            if found:
                return [summary(found), "", *updates]
            data.setdefault("output_dir", str(folder / run_name))
            try:
                started = jobs.launch(folder, run_name, form.to_yaml(data))
            except UserError as exc:
                return [f"**error**: {exc}", "", *updates]
            shown = " ".join(started.command[2:])
            note = (
                f"Started `{run_name}` (pid {started.pid}) in `{started.run_dir}`: `llmft {shown.split(' ', 1)[1]}`; "
                f"its output goes to `{started.log}`. Follow it on the Runs page."
            )
            return [summary(found), note, *updates]

        def from_recipe(choice: str) -> list[Any]:
            values = {f.id: _initial(f) for f in fields}
            if choice != "(blank)":
                found = find_recipe(choice)
                values |= form.values_from_config(merged(found) if found is not None else {}, fields)
            new_name = choice.rsplit("/", 1)[-1] if choice != "(blank)" else "my-run"
            return [new_name] + [gr.update(value=values[f.id]) for f in fields]

        def show_preview(*args: Any) -> list[Any]:
            _, found, data = marked(values_of(args))
            if found:
                return [None, summary(found)]
            try:
                config = jobs.load_text(folder, form.to_yaml(data))
                result = preview_mod.preview(config)
            except UserError as exc:
                return [None, f"**error**: {exc}"]
            return [preview_mod.highlighted(result), preview_mod.figures_markdown(result)]

        preview_button.click(show_preview, inputs=widgets, outputs=[preview_examples, preview_figures])

        outputs_refresh = [config_yaml, status, *widgets]
        gr.on([w.change for w in widgets], refresh, inputs=widgets, outputs=outputs_refresh)
        app.load(refresh, inputs=widgets, outputs=outputs_refresh)
        recipe.change(from_recipe, inputs=recipe, outputs=[name, *widgets])
        validate_button.click(validate, inputs=widgets, outputs=[status, *widgets])
        save_button.click(save, inputs=[name, *widgets], outputs=launched)
        launch_button.click(launch, inputs=[name, *widgets], outputs=[status, launched, *widgets])

        with gr.Tab("Runs", id="runs"):
            runs_table = gr.DataFrame(
                headers=runs_mod.TABLE_HEADERS, label=f"Runs under {folder}", interactive=False, elem_id="runs-table"
            )
            with gr.Row():
                chosen = gr.Dropdown([], label="Run", elem_id="run-choice")
                compare = gr.Dropdown([], multiselect=True, label="Compare curves of", elem_id="run-compare")
                metric = gr.Dropdown(
                    list(runs_view.CURVES), value="loss", label="Curve (any logged metric)", elem_id="curve"
                )
            detail = gr.Markdown(elem_id="run-detail")
            before_after_table = gr.Markdown(elem_id="run-before-after")
            plot = gr.LinePlot(x="step", y="value", color="run", label="curves", elem_id="run-plot")
            with gr.Row():
                stop_button = gr.Button("Stop (checkpoint, then interrupted)", elem_id="stop")
                resume_button = gr.Button("Resume from the last checkpoint", elem_id="resume")
            log_tail = gr.Textbox(label="log", lines=12, max_lines=12, elem_id="run-log")
            timer = gr.Timer(2.0)

        def run_paths() -> dict[str, Path]:
            return {str(r.path.relative_to(folder)): r.path for r in runs_mod.list_runs(folder)}

        def poll(current: str | None, together: list[str] | None, curve: str) -> list[Any]:
            listed = runs_mod.list_runs(folder)
            names = [str(r.path.relative_to(folder)) for r in listed]
            current = current if current in names else (names[0] if names else None)
            info = next((r for r in listed if str(r.path.relative_to(folder)) == current), None)
            shown = [current] if current else []
            shown += [n for n in (together or []) if n in names and n != current]
            logged, curve, points = runs_view.curves(folder, shown, curve)
            return [
                pd.DataFrame(runs_mod.table(listed), columns=runs_mod.TABLE_HEADERS),
                gr.update(choices=names, value=current),
                gr.update(choices=names, value=[n for n in (together or []) if n in names]),
                runs_view.detail(info),
                points,
                runs_view.log(folder, info),
                runs_view.before_after(info),
                gr.update(choices=logged or list(runs_view.CURVES), value=curve),
            ]

        poll_outputs = [runs_table, chosen, compare, detail, plot, log_tail, before_after_table, metric]
        timer.tick(poll, inputs=[chosen, compare, metric], outputs=poll_outputs)
        app.load(poll, inputs=[chosen, compare, metric], outputs=poll_outputs)
        for trigger in (chosen.input, compare.input, metric.input):  # a user's choice; poll's own updates don't fire
            trigger(poll, inputs=[chosen, compare, metric], outputs=poll_outputs)

        def do_stop(current: str | None) -> str:
            path = run_paths().get(current or "")
            if path is None:
                return "choose a run"
            try:
                return f"asked pid {jobs.stop(path)} to stop: it saves a checkpoint after this step"
            except UserError as exc:
                return f"**error**: {exc}"

        def do_resume(current: str | None) -> str:
            path = run_paths().get(current or "")
            if path is None:
                return "choose a run"
            try:
                started = jobs.resume(folder, path)
            except UserError as exc:
                return f"**error**: {exc}"
            return f"resumed (pid {started.pid}); output in `{started.log}`"

        stop_button.click(do_stop, inputs=chosen, outputs=detail)
        resume_button.click(do_resume, inputs=chosen, outputs=detail)

        with gr.Tab("Chat", id="chat") as chat_tab:
            with gr.Row():
                chat_run = gr.Dropdown([], label="Run (completed)", elem_id="chat-run-choice")
                chat_start = gr.Button("Start chat server", elem_id="chat-start")
            chat_status = gr.Markdown(elem_id="chat-status")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature", elem_id="chat-temp")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p", elem_id="chat-top-p")
                max_tokens = gr.Slider(1, 1024, value=128, step=1, label="max_tokens", elem_id="chat-max-tokens")
            with gr.Row():
                run_chat = gr.Chatbot(label="the run", elem_id="chat-run", height=360)
                base_chat = gr.Chatbot(label="its base model", elem_id="chat-base", height=360)
            with gr.Row():
                prompt = gr.Textbox(label="message", scale=5, elem_id="chat-prompt")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")

        with gr.Tab("Export", id="export") as export_tab:
            with gr.Row():
                export_run = gr.Dropdown([], label="Run (completed)", elem_id="export-run-choice")
                outtype = gr.Dropdown(list(GGUF_TYPES), value="f16", label="GGUF type", elem_id="export-outtype")
            with gr.Row():
                merge_button = gr.Button("Merge the adapter (merged/)", elem_id="export-merge")
                gguf_button = gr.Button("GGUF file", elem_id="export-gguf")
                ollama_button = gr.Button("Ollama Modelfile + GGUF", elem_id="export-ollama")
            export_result = gr.Markdown(elem_id="export-result")

        def completed_runs(current: str | None) -> Any:
            names = [str(r.path.relative_to(folder)) for r in runs_mod.list_runs(folder) if r.status == "completed"]
            return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

        chat_tab.select(completed_runs, inputs=chat_run, outputs=chat_run)
        export_tab.select(completed_runs, inputs=export_run, outputs=export_run)

        def start_chat(current: str | None) -> str:
            if not current:
                return "choose a completed run"
            try:
                session = sessions.open(folder / current)
            except UserError as exc:
                return f"**error**: {exc}"
            base = f" and its base as `{session.base_id}`" if session.base_id else " (no base model to compare with)"
            return f"serving `{session.run_id}`{base} with `llmft serve` on {session.servers[session.run_id].url}"

        def respond(current: str | None, message: str, history_run: list, history_base: list, t, p, n):
            session = sessions.get(folder / current) if current else None
            if session is None or not message.strip():
                yield (
                    history_run,
                    history_base,
                    message,
                    "start the chat server first" if session is None else gr.update(),
                )
                return
            history_run = [*history_run, {"role": "user", "content": message}]
            history_base = [*history_base, {"role": "user", "content": message}]
            targets = {"run": session.run_id, "base": session.base_id}
            answers = {"run": "", "base": ""}
            for which, text, error in chat.stream_both(session, targets, history_run, history_base, t, p, int(n)):
                answers[which] = text if error is None else f"[error] {error}"
                yield (
                    [*history_run, {"role": "assistant", "content": answers["run"]}],
                    [*history_base, {"role": "assistant", "content": answers["base"]}]
                    if session.base_id
                    else history_base,
                    "",
                    gr.update(),
                )

        chat_start.click(start_chat, inputs=chat_run, outputs=chat_status)
        chat_inputs = [chat_run, prompt, run_chat, base_chat, temperature, top_p, max_tokens]
        chat_outputs = [run_chat, base_chat, prompt, chat_status]
        send.click(respond, inputs=chat_inputs, outputs=chat_outputs)
        prompt.submit(respond, inputs=chat_inputs, outputs=chat_outputs)

        def exported(action: str, current: str | None, kind: str) -> str:
            if not current:
                return "choose a completed run"
            run_dir = folder / current
            try:
                if action == "merge":
                    result = merge_run(run_dir)
                    return f"{result.message}  \nfiles: `{result.path}`"
                path = export_run_files(run_dir, action, kind)
            except UserError as exc:
                return f"**error**: {exc}"
            files = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
            return f"exported to `{path}`: {', '.join(files)}"

        merge_button.click(lambda r, k: exported("merge", r, k), inputs=[export_run, outtype], outputs=export_result)
        gguf_button.click(lambda r, k: exported("gguf", r, k), inputs=[export_run, outtype], outputs=export_result)
        ollama_button.click(lambda r, k: exported("ollama", r, k), inputs=[export_run, outtype], outputs=export_result)
    app.llmft_sessions = sessions  # type: ignore[attr-defined]  # `llmft ui` closes the chat servers on exit
    return app
