"""The new-run page's data preview: the figures `llmft check` computes, as the UI shows them."""

from __future__ import annotations

from pathlib import Path

from llm_finetuning.config.schema import Config
from llm_finetuning.data.tokenize import IGNORE_INDEX
from llm_finetuning.models.tiny import build_tokenizer
from llm_finetuning.ui import preview
from tests.conftest import tiny_config


def test_padding_share_by_hand():
    # batches [3, 5] and [2]: padded to 5 and 2 -> 10 + 2 positions for 3 + 5 + 2 tokens
    assert preview.padding_share([3, 5, 2], batch=2, max_length=100) == 1 - 10 / 12
    # cut at max_length 4: [3, 4] and [2] -> 8 + 2 positions for 9 tokens
    assert preview.padding_share([3, 5, 2], batch=2, max_length=4) == 1 - 9 / 10
    assert preview.padding_share([], batch=4, max_length=8) == 0.0


def test_loss_spans_cover_exactly_the_labelled_tokens():
    from llm_finetuning.check.report import loss_spans
    from llm_finetuning.data.tokenize import Encoded

    tokenizer = build_tokenizer()
    prompt, answer = tokenizer("Spell ab")["input_ids"], tokenizer(" A B")["input_ids"]
    encoded = Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, "")
    spans = loss_spans(encoded, tokenizer)
    assert [trained for _, trained in spans] == [False, True]
    assert spans[1][0] == tokenizer.decode(answer) and spans[0][0] == tokenizer.decode(prompt)


def test_preview_of_a_tiny_run(tmp_path: Path, write_jsonl, qa_rows):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    config.data.padding_free = False
    result = preview.preview(config, rows=50, examples=2)
    assert result.ok
    (source,) = result.sources
    assert source.rows == len(qa_rows) and source.malformed == 0 and len(source.lengths) == len(qa_rows)
    assert source.over_max_length == 0.0
    batch = config.training.per_device_batch_size
    assert source.padding == preview.padding_share(source.lengths, batch, result.max_length)
    assert len(result.examples) == 2
    first = result.examples[0]
    assert any(trained for _, trained in first) and not first[0][1]  # the prompt carries no loss
    assert "".join(text for text, trained in first if trained).replace(" ", "").startswith("AL")  # "A L P H A"
    assert result.memory_gib is not None and result.memory_gib > 0
    shown = preview.figures_markdown(result)
    assert f"{source.rows} rows sampled" in shown and "padding in a batch" in shown and "memory estimate" in shown
    labelled = preview.highlighted(result)
    assert ("".join(t for t, label in labelled if label == "loss")) == "".join(
        t for spans in result.examples for t, trained in spans if trained
    )
    config.data.padding_free = True
    assert preview.preview(config, rows=50).sources[0].padding is None
