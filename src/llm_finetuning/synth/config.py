"""The schema of `llmft data generate CONFIG`: the teacher endpoint, one task, the cleaning and the output.

```yaml
teacher: {base_url: http://127.0.0.1:8000/v1, model: teacher, temperature: 0.7, max_tokens: 512}
task:
  name: distill            # self_instruct | evol_instruct | distill | multi_turn | constitutional
  prompts: prompts.jsonl
  samples: 4
  score: {reward: answer_correctness}
output: distilled.jsonl
```
Every option is described once, here; unknown keys fail with the closest name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.data.clean.config import CleanConfig


class TeacherConfig(JudgeConfig):
    """The model that writes the data: any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM,
    `llmft serve`...), called through the judge client: the same on-disk cache (a rerun sends no request for what
    it already has), budget, retries with backoff, and concurrency. Sampling settings apply to every request."""

    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature. Above 0 the samples of one prompt differ (each sample is its own cached request)."""
    max_tokens: int = Field(1024, gt=0)
    """Longest reply, in tokens."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds to wait for the endpoint (connecting, and between bytes of the reply) before the attempt fails."""


class ScoreConfig(Section):
    """How each sample is scored for rejection sampling: a reward of the library or the judge with a rubric."""

    reward: str | None = None
    """A reward by name (`llmft rewards list`): `answer_correctness`, `boxed_correctness`, `format`...; rows
    need the reference columns the reward reads (e.g. `answer`)."""
    rubric: str | None = None
    """A judge rubric by name (`correctness`, `answer_relevancy`, `multihop_qa`...), scored in [0, 1] by
    `judge` (or by the teacher when `judge` is unset)."""
    judge: JudgeConfig | None = None
    """The endpoint that grades with `rubric`; unset: the teacher grades its own samples at temperature 0."""

    @model_validator(mode="after")
    def _one(self) -> ScoreConfig:
        if (self.reward is None) == (self.rubric is None):
            raise ValueError("give exactly one of `reward` (a reward of the library) or `rubric` (a judge rubric)")
        if self.judge is not None and self.rubric is None:
            raise ValueError("`judge` grades with a `rubric`; set `rubric` or remove `judge`")
        return self


class _Task(Section):
    templates: dict[str, str] = Field(default_factory=dict)
    """Replacements for the task's built-in prompt templates, by template name (`llmft data generate --templates`
    prints them with their placeholders). The template used, with a hash of its text, is kept in each row's
    provenance."""


class SelfInstructTask(_Task):
    """Self-instruct: the teacher writes new instructions after a few examples drawn from the seed tasks and the
    instructions kept so far; one too similar to a kept one (ROUGE-L) is dropped; then the teacher answers each."""

    name: Literal["self_instruct"]
    seed_tasks: str
    """File of seed tasks: rows with `instruction` (optional `input`, `output`), or `prompt`. Relative to this
    YAML file."""
    num_instructions: int = Field(100, gt=0)
    """New instructions to keep (the run stops earlier when `max_requests` is reached)."""
    examples_per_request: int = Field(3, gt=0)
    """Examples shown in each request: drawn from the seed tasks and, once there are some, the new instructions."""
    new_per_request: int = Field(5, gt=0)
    """Instructions asked for in each request."""
    max_similarity: float = Field(0.7, gt=0, le=1)
    """An instruction whose ROUGE-L F1 with a seed or a kept instruction is at or above this is dropped."""
    max_requests: int = Field(50, gt=0)
    """Most instruction-writing requests; stops a teacher that keeps repeating itself."""


EVOLUTIONS = ("constraints", "deepen", "concretize", "reasoning", "breadth")


class EvolInstructTask(_Task):
    """Evol-Instruct: each prompt is rewritten `rounds` times, each time by an operation drawn at random (more
    constraints, deeper, more concrete, more reasoning steps, or a new prompt of the same domain); a rewrite that
    failed (empty, a copy, a refusal, one that leaks the rewriting instructions) ends that prompt's evolution;
    then the teacher answers the last good rewrite."""

    name: Literal["evol_instruct"]
    prompts: str
    """File of prompts: rows with `prompt` (text or messages), `instruction` (+ `input`), `question` or
    `messages`. Relative to this YAML file."""
    rounds: int = Field(2, gt=0)
    """Rewrites per prompt."""
    operations: list[Literal["constraints", "deepen", "concretize", "reasoning", "breadth"]] = Field(
        default_factory=lambda: list(EVOLUTIONS), min_length=1
    )
    """Operations drawn from, uniformly."""
    keep_intermediate: bool = False
    """Also write a row for every successful rewrite before the last (answered too)."""


class DistillTask(_Task):
    """Distillation with rejection sampling: for each prompt the teacher writes `samples` answers; each is scored
    and the best one at or above `min_score` is kept (or every one, with `keep: all`)."""

    name: Literal["distill"]
    prompts: str
    """File of prompts (as for `evol_instruct`); other columns (a reference `answer`...) reach the reward."""
    samples: int = Field(4, gt=0)
    """Answers sampled per prompt."""
    score: ScoreConfig | None = None
    """How samples are scored; unset keeps the first sample of each prompt (plain distillation)."""
    min_score: float | None = None
    """Samples scoring below this are rejected; a prompt with no sample left is counted and dropped."""
    keep: Literal["best", "all"] = "best"
    """`best`: one row per prompt (the highest score, the earliest on a tie); `all`: every accepted sample."""
    preference_output: str | None = None
    """Also write preference rows (best accepted sample chosen, worst sample rejected, when their scores
    differ): on-policy-style pairs for DPO or a reward model."""


class MultiTurnTask(_Task):
    """Multi-turn conversations: the teacher answers, then plays the user and writes a follow-up, for `turns`
    user turns in all."""

    name: Literal["multi_turn"]
    prompts: str
    """File of opening prompts (as for `evol_instruct`)."""
    turns: int = Field(3, ge=1)
    """User turns per conversation (the first is the prompt); every user turn gets an answer."""
    system: str | None = None
    """System message put at the head of every conversation (and shown to the teacher when answering)."""


class ConstitutionalTask(_Task):
    """Constitutional AI: the model answers each prompt, critiques its answer against a principle drawn from the
    constitution, and revises it (`revisions` times, a new principle each time). The final revisions become SFT
    rows (`output`); (revision chosen, original rejected) become preference rows (`preference_output`)."""

    name: Literal["constitutional"]
    prompts: str
    """File of prompts (red-team or everyday requests; as for `evol_instruct`)."""
    constitution: str = "builtin:harmless"
    """The principles: `builtin:harmless`, or a YAML file with `principles: [{name, critique, revision}]`
    (relative to this YAML file)."""
    revisions: int = Field(1, ge=1)
    """Critique-and-revise rounds per prompt."""
    model: JudgeConfig | None = None
    """The model that answers, critiques and revises (usually the model being aligned, served with
    `llmft serve`); unset: the teacher."""
    preference_output: str | None = None
    """Where the preference rows go; unset: next to `output`, named `<output stem>.preference.jsonl`."""


TaskConfig = Annotated[
    SelfInstructTask | EvolInstructTask | DistillTask | MultiTurnTask | ConstitutionalTask,
    Field(discriminator="name"),
]


class PricingConfig(Section):
    """Prices of the teacher's tokens, for the cost in the report (the token counts come from the endpoint)."""

    input_per_million: float = Field(0.0, ge=0)
    """Price of one million prompt tokens, in your currency."""
    output_per_million: float = Field(0.0, ge=0)
    """Price of one million completion tokens."""


class GenerateCleanConfig(CleanConfig):
    """The cleaning pipeline, run on the generated rows before they are written (on by default): exact and near
    duplicates, quality filters, PII redaction, and decontamination against `against`."""

    enabled: bool = True
    """Clean the generated rows. Every removal is in `<output>.clean_report.json`."""
    against: list[str] = Field(default_factory=list)
    """Evaluation files (any supported format) the rows are decontaminated against, relative to this YAML file."""


class GenerateConfig(Section):
    """One data-generation run: a teacher, a task, cleaning, and where the rows go."""

    teacher: TeacherConfig
    """The endpoint that writes the data."""
    task: TaskConfig
    """What to generate; `task.name` picks the workflow."""
    output: str
    """Output file (`.jsonl`, `.json`, `.parquet`, `.csv`; `.gz` compresses): `messages` rows with a
    `provenance` column, readable as `format: messages`. Relative to this YAML file."""
    overwrite: bool = False
    """Replace existing output files (otherwise the run stops before any request)."""
    seed: int = 42
    """Seed of every random draw (examples shown, operations, principles), so a rerun asks the same requests and
    the cache answers them."""
    clean: GenerateCleanConfig = Field(default_factory=GenerateCleanConfig)
    """Cleaning of the generated rows."""
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    """Token prices for the cost estimate."""
    max_rows: int | None = Field(None, gt=0)
    """Read at most this many prompts (or seed tasks) from the input file."""
