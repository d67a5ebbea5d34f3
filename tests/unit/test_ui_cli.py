"""`llmft ui` start-up rules: loopback by default, a password anywhere else, the same error style as the CLI."""

from __future__ import annotations

from typer.testing import CliRunner

from llm_finetuning.cli.main import app


def test_beyond_loopback_needs_a_password(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMFT_UI_PASSWORD", raising=False)
    result = CliRunner().invoke(app, ["ui", "--runs", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "needs a password" in result.output and "LLMFT_UI_PASSWORD" in result.output
    assert "Traceback" not in result.output


def test_the_form_key_names_survive_as_dom_ids():
    from llm_finetuning.ui import form
    from llm_finetuning.ui.app import elem_id

    ids = [elem_id(f.id) for f in form.fields()]
    assert len(set(ids)) == len(ids)  # every field can be found on the page
    assert elem_id("data.train[0].path") == "field-data-train-0--path"
