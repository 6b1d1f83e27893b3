"""The model card: front matter that parses with the Hub's fields, the transplant facts, and a base card kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensurgeon.evaluation.rows import EvalRow, HealRow
from tokensurgeon.jobs.heal import HealReport, card_lines
from tokensurgeon.report.card import BASE_CARD, append_section, split_front_matter, write_transplant_card
from tokensurgeon.report.models import TransplantReport

BASE_README = "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# SmolLM2\n\nThe original card: keep me.\n"


def _front(card: Path) -> dict:
    """The YAML front matter as data: PyYAML when installed, else a parser for the flat subset the card writes."""
    front, _ = split_front_matter(card.read_text(encoding="utf-8"))
    assert front, "no front matter"
    try:
        import yaml
    except ImportError:
        data, key = {}, None
        for line in front.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith("- "):
                data[key].append(json.loads(line[2:]))
            else:
                key, _, value = line.partition(":")
                data[key] = json.loads(value) if value.strip() else []
        return data
    return yaml.safe_load(front)


def _report(out: Path, base: Path) -> TransplantReport:
    return TransplantReport(
        version="0.1.0",
        base={"path": str(base), "kind": "byte-level BPE", "vocab_size": 49152, "hidden_size": 576, "tied": True},
        donor={"path": "/tokenizers/llama3", "kind": "byte-level BPE", "vocab_size": 128257, "is_model": False},
        output={"path": str(out), "rows": 128257},
        method={"name": "omp", "options": {"k": 8}, "seed": 0, "device": "cpu", "chat_template": "donor"},
        counts={"exact": 39310, "new": 88690, "computed": 88944}, timings={},
        warnings=["number schemes differ: '1234567' splits into [1, 1] (base) vs [3, 3, 1]; arithmetic may suffer",
                  "21 new tokens could not be decomposed (e.g. '<0xC0>', 'ñ')"],
        evaluation=[EvalRow(text="lee_news.txt", bytes=4000, base_bpb=1.0046, patched_bpb=1.2505, ratio=1.2448,
                            base_bytes_per_token=4.1, donor_bytes_per_token=4.3, new_token_share=0.01,
                            boundary_agreement=0.9)])


@pytest.fixture()
def base_dir(tmp_path) -> Path:
    base = tmp_path / "smollm2-135m"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    (base / "README.md").write_text(BASE_README)
    return base


def test_transplant_card_fields_and_facts(tmp_path, base_dir):
    out = tmp_path / "out"
    out.mkdir()
    card = write_transplant_card(_report(out, base_dir), out, base_dir=base_dir,
                                 command="tokensurgeon transplant ./smollm2-135m ./llama3 -o out --method omp")
    front = _front(card)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert {"tokensurgeon", "tokenizer-transplant", "omp"} <= set(front["tags"])
    assert front["license"] == "apache-2.0"
    text = card.read_text()
    for fact in ("`/tokenizers/llama3`", "`omp`", '{"k": 8}', "| exact | 39,310 |", "| lee_news.txt | 4,000 | 1.0046 | 1.2505 | 1.245 |",
                 "arithmetic may suffer", "'<0xC0>'", "tokensurgeon transplant ./smollm2-135m ./llama3 -o out --method omp",
                 f"[{BASE_CARD}]({BASE_CARD})"):
        assert fact in text, fact
    assert "keep me" not in text  # the base card is linked, not merged
    assert (out / BASE_CARD).read_text() == BASE_README and (base_dir / "README.md").read_text() == BASE_README


def test_without_a_base_card_or_hub_id(tmp_path):
    base = tmp_path / "my: model #1"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path)}))
    out = tmp_path / "out"
    out.mkdir()
    report = _report(out, base)
    report.evaluation = []
    card = write_transplant_card(report, out, base_dir=base, command="tokensurgeon transplant x y -o out")
    front = _front(card)
    assert front["base_model"] == "my: model #1" and "license" not in front
    assert "# base_model: a local directory name" in card.read_text()
    assert not (out / BASE_CARD).exists() and "No bits-per-byte evaluation" in card.read_text()


def test_heal_and_export_append_to_their_sources_card(tmp_path, base_dir):
    patched = tmp_path / "patched"
    patched.mkdir()
    write_transplant_card(_report(patched, base_dir), patched, base_dir=base_dir, command="tokensurgeon transplant")
    before = (patched / "README.md").read_text()
    healed = tmp_path / "healed"
    healed.mkdir()
    heal = HealReport(version="0.1.0", patched=str(patched), out=str(healed), teacher=None, objective="lm",
                      train="rows", trainable={}, steps_run=200, best_step=150, improved=True, stopped_by="steps",
                      tokens_per_second=900.0, seconds_per_step=0.5, options={}, device="cpu",
                      texts=[HealRow("news.txt", 81000, 9000, 1.25, 1.10, base_bpb=1.0, before_ratio=1.25,
                                     after_ratio=1.10)])
    card = append_section(patched, healed, "Healing", card_lines(heal), command="tokensurgeon heal patched -o healed",
                          tags=("healed",))
    text = card.read_text()
    assert (patched / "README.md").read_text() == before
    assert split_front_matter(before)[1].rstrip() in text and text.index("## Use") < text.index("## Healing")
    assert "| news.txt | 9,000 | 1.0000 | 1.2500 | 1.1000 |" in text and "tokensurgeon heal patched -o healed" in text
    front = _front(card)
    assert front["tags"].count("tokensurgeon") == 1 and "healed" in front["tags"]
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M"

    exported = tmp_path / "exported"
    exported.mkdir()
    card = append_section(healed, exported, "Export", ["Re-written."], command="tokensurgeon export healed -o exported")
    assert card.read_text().count("## Healing") == 1 and "Re-written." in card.read_text()
    assert _front(card)["library_name"] == "transformers"


def test_a_source_without_a_card_gets_a_minimal_one(tmp_path):
    source, out = tmp_path / "plain", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    card = append_section(source, out, "Export", ["Re-written."], command="tokensurgeon export plain -o out")
    front = _front(card)
    assert front["base_model"] == "plain" and {"tokensurgeon", "tokenizer-transplant"} <= set(front["tags"])


def test_every_output_gets_a_card(tiny_models, tmp_path):
    """transplant writes README.md (and keeps the base's card); export and heal append their sections."""
    from conftest import CORPORA
    from tokensurgeon.config import ExportConfig, HealConfig, TransplantConfig
    from tokensurgeon.jobs.export import export
    from tokensurgeon.jobs.heal import heal
    from tokensurgeon.pipeline.transplant import transplant

    base = tmp_path / "base"
    base.mkdir()
    for item in Path(tiny_models["tied"]).iterdir():
        (base / item.name).symlink_to(item)
    (base / "README.md").write_text(BASE_README)
    out = tmp_path / "patched"
    transplant(TransplantConfig(base=base, donor=tiny_models["donor_llama2"], out=out, method="mean"))
    front = _front(out / "README.md")
    assert front["base_model"] == "base" and front["license"] == "apache-2.0" and "mean" in front["tags"]
    assert (out / BASE_CARD).read_text() == BASE_README
    assert "--method mean" in (out / "README.md").read_text()
    exported = tmp_path / "exported"
    export(ExportConfig(source=out, out=exported, dtype="fp32"))
    assert "## Export" in (exported / "README.md").read_text() and (exported / BASE_CARD).is_file()
    assert f"Re-written from `{out}`: dtype fp32, 1 shard(s)" in (exported / "README.md").read_text()
    healed = tmp_path / "healed"
    heal(HealConfig(patched=out, texts=(CORPORA / "udhr" / "spa.txt",), out=healed, steps=2, eval_every=1,
                    eval_max_bytes=400, compare_base=False, context=32, batch_size=2))
    text = (healed / "README.md").read_text()
    assert "## Healing" in text and "## Export" not in text and "healed" in _front(healed / "README.md")["tags"]
