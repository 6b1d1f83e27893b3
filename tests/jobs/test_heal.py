from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import CORPORA, TOKENIZERS
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
from tokensurgeon.cli import app
from tokensurgeon.config import HealConfig, TransplantConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.jobs.heal import heal, split_held_out
from tokensurgeon.pipeline.transplant import transplant

runner = CliRunner()
QUICK = {"steps": 4, "eval_every": 2, "batch_size": 2, "context": 32, "held_out": 0.2, "eval_max_bytes": 600,
         "compare_base": False, "guard_tasks": ()}  # the guard default (retention) has tests of its own
LM_ROWS = {"objective": "lm", "train": "rows"}  # the original heal, whatever the defaults are


def weights(path):
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def changed_tensors(before, after):
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.fixture(scope="module")
def patched(tiny_models, tmp_path_factory):
    """Tiny SmolLM2-vocabulary models given the Llama-2 tokenizer: tied (one file) and untied (sharded)."""
    root = tmp_path_factory.mktemp("heal")
    for kind in ("tied", "untied"):
        transplant(TransplantConfig(base=tiny_models[kind], donor=TOKENIZERS / "llama2", out=root / kind))
    return {kind: root / kind for kind in ("tied", "untied")}


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "spa.txt"
    path.write_text((CORPORA / "udhr" / "spa.txt").read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    path = tmp_path_factory.mktemp("unseen") / "ita.txt"
    path.write_text((CORPORA / "udhr" / "ita.txt").read_text(encoding="utf-8")[:1500], encoding="utf-8")
    return path


def free_ids(path):
    """The rows --train rows may move: computed rows and copies of rows the base barely trained."""
    from tokensurgeon.recovery.train import base_of
    from tokensurgeon.recovery.trainable import free_rows, read_provenance
    from tokensurgeon.vocab import build_vocabulary, load_tokenizer
    from tokensurgeon.vocab.undertrained import undertrained_rows

    base = open_checkpoint(base_of(path))
    undertrained = undertrained_rows(read_embeddings(base)[0], build_vocabulary(load_tokenizer(base.path)).byte_fallback)
    free = free_rows(read_provenance(path, open_checkpoint(path).vocab_rows), undertrained)
    computed = [row["id"] for row in map(json.loads, filter(None, (path / "provenance.jsonl").read_text().split("\n")))
                if row["path"] not in ("copy", "padding-mean")]
    assert set(computed) <= set(free)
    return free


def test_split_held_out_cuts_between_characters():
    text = "añb" * 10 + "日本語"
    train, held = split_held_out(text, 0.1)
    assert train + held == text and len(held.encode()) <= len(text.encode()) * 0.1 + 3 and held.endswith("語")


def test_only_new_rows_change(patched, text, tmp_path):
    source, out = open_checkpoint(patched["untied"]), tmp_path / "out"
    report = heal(HealConfig(patched=source.path, texts=(text,), out=out, lr=1e-2, **LM_ROWS, **QUICK))
    assert report.improved and report.best_step > 0 and (report.objective, report.train) == ("lm", "rows")
    assert all(row.after_bpb < row.before_bpb for row in report.texts)
    before, after = weights(source.path), weights(out)
    changed = changed_tensors(before, after)
    assert changed == {source.input_name, source.output_name}
    new = torch.zeros(source.vocab_rows, dtype=torch.bool)
    new[free_ids(source.path)] = True
    for name in changed:
        assert after[name].dtype == before[name].dtype == torch.bfloat16
        assert torch.equal(after[name][~new], before[name][~new])  # other copied rows bit for bit
        assert not torch.equal(after[name][new], before[name][new])
    assert {f.name for f in source.path.iterdir()} | {"heal.json"} == {f.name for f in out.iterdir()}
    assert json.loads((out / "heal.json").read_text())["best_step"] == report.best_step


def test_never_worse_than_input(patched, text, tmp_path):
    source = patched["tied"]
    report = heal(HealConfig(patched=source, texts=(text,), out=tmp_path / "out", lr=100.0, **LM_ROWS, **QUICK))
    assert not report.improved and report.best_step == 0 and len(report.history) > 1
    assert max(report.history[-1].held_out_bpb) > report.texts[0].before_bpb  # training did hurt
    assert report.texts[0].after_bpb == report.texts[0].before_bpb
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()


def test_deterministic(patched, text, tmp_path):
    runs = [heal(HealConfig(patched=patched["untied"], texts=(text,), out=tmp_path / name, lr=1e-2, **LM_ROWS,
                            **QUICK)) for name in ("a", "b")]
    assert runs[0].improved
    assert runs[0].history == runs[1].history
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_train_rows_needs_provenance_and_rows_all_is_embeddings(tiny_models, text, tmp_path):
    base = tiny_models["tied"]
    with pytest.raises(TokenSurgeonError, match="provenance"):
        heal(HealConfig(patched=base, texts=(text,), out=tmp_path / "refused", **LM_ROWS, **QUICK))
    assert not (tmp_path / "refused").exists()
    config = HealConfig(patched=base, texts=(text,), out=tmp_path / "out", objective="lm", rows="all", lr=1e-3,
                        anchor_weight=0.0, **QUICK)
    assert config.train == "embeddings"  # the old --rows all
    report = heal(config)
    assert report.improved and report.train == "embeddings"
    embed, _ = read_embeddings(open_checkpoint(tmp_path / "out"))
    assert not torch.equal(embed, read_embeddings(open_checkpoint(base))[0])


def test_lora_output_is_a_plain_merged_checkpoint(patched, text, unseen, tmp_path):
    """--train lora: the output loads with AutoModelForCausalLM, in the stored dtype, and differs from the input
    only in the embeddings and the LoRA-targeted projections; --save-adapter writes the PEFT adapter too."""
    from transformers import AutoModelForCausalLM

    source, out = open_checkpoint(patched["untied"]), tmp_path / "out"
    report = heal(HealConfig(patched=source.path, texts=(text,), eval_texts=(unseen,), out=out, objective="lm",
                             train="lora", lora_rank=4, lr=1e-2, lora_lr=1e-2, save_adapter=True, **QUICK))
    assert report.improved and report.train == "lora" and report.options["lora_rank"] == 4
    assert any("lora_A" in name for name in report.trainable)
    assert [row.text for row in report.unseen] == ["ita.txt"] and report.tokens_per_second > 0
    before, after = weights(source.path), weights(out)
    changed = changed_tensors(before, after)
    allowed = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert {source.input_name, source.output_name} <= changed
    assert any(part in name for name in changed for part in allowed)
    assert all(name in (source.input_name, source.output_name) or any(p in name for p in allowed) for name in changed)
    assert all(after[name].dtype == before[name].dtype for name in before)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (out / "adapter" / "adapter_config.json").is_file() and report.adapter == str(out / "adapter")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in name for name in adapter) and any("embed_tokens" in name for name in adapter)
    assert "Recovery training" in (out / "README.md").read_text()


def test_train_all_distils_every_weight_from_the_recorded_base(patched, text, tmp_path):
    """--train all through the CLI: the recorded base teaches as a second copy (the student's body moves), the
    body trains at --body-lr, and the output is a plain checkpoint in the stored dtype, its body changed too. (The
    LM mix gives the random tiny model a held-out gain the guard can keep; distillation alone toward it has none.)"""
    from transformers import AutoModelForCausalLM

    source, out = open_checkpoint(patched["untied"]), tmp_path / "out"
    result = runner.invoke(app, ["heal", str(source.path), "--text", str(text), "-o", str(out), "--train", "all",
                                 "--body-lr", "0.001", "--lr", "0.01", "--lm-mix", "1", "--steps", "4", "--eval-every", "2",
                                 "--batch-size", "2", "--context", "32", "--held-out", "0.2",
                                 "--eval-max-bytes", "600", "--guard-task", "none", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["objective"], data["train"], data["options"]["body_lr"]) == ("distill", "all", 0.001)
    assert data["improved"] and set(data["trainable"]) == set(source.tensors)
    before, after = weights(source.path), weights(out)
    changed = changed_tensors(before, after)
    assert {source.input_name, source.output_name} <= changed and any("mlp" in name for name in changed)
    assert all(after[name].dtype == before[name].dtype for name in before)
    AutoModelForCausalLM.from_pretrained(out)
    assert "every weight" in (out / "README.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_distill_with_lora_on_cuda_writes_a_checkpoint_that_loads_on_cpu(patched, text, tmp_path):
    """The GPU path: bf16 autocast, the teacher pass through the shared body, adapters merged from CUDA tensors
    into a checkpoint in the stored dtype that loads on the CPU with finite logits."""
    from transformers import AutoModelForCausalLM

    source, out = open_checkpoint(patched["untied"]), tmp_path / "out"
    report = heal(HealConfig(patched=source.path, texts=(text,), out=out, objective="distill", train="lora",
                             lr=1e-2, lora_lr=1e-2, device="cuda", **QUICK))
    assert report.device.startswith("cuda") and report.steps_run >= 1
    assert all(h.loss is None or math.isfinite(h.loss) for h in report.history)
    before, after = weights(source.path), weights(out)
    assert all(after[name].dtype == before[name].dtype and after[name].device.type == "cpu" for name in before)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_distill_from_the_recorded_base(patched, text, tmp_path):
    report = heal(HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "out", objective="distill",
                             train="embeddings", lr=1e-2, **QUICK))
    assert report.objective == "distill" and report.teacher is not None and report.steps_run >= 1
    assert json.loads((patched["tied"] / "report.json").read_text())["base"]["path"] == report.teacher


def test_draft_distils_toward_its_target_by_token_kl(tiny_models, text, tmp_path):
    """A draft sharing the target's tokenizer (no report.json, another body): token-level KL to --teacher."""
    draft = shutil.copytree(tiny_models["untied"], tmp_path / "draft")
    report = heal(HealConfig(patched=draft, texts=(text,), out=tmp_path / "out", objective="distill",
                             train="embeddings", teacher=tiny_models["tied"], lr=1e-2, **QUICK))
    assert report.teacher == str(tiny_models["tied"]) and report.steps_run >= 1
    assert len(report.history) > 1 and all(h.loss is None or h.loss >= 0 for h in report.history)


@pytest.mark.parametrize("mix", ["--kl-mix", "--hidden-mix"])
def test_chunk_terms_with_one_tokenizer_are_one_line_exit_2(tiny_models, text, tmp_path, mix):
    """A draft shares its target's tokenizer: no chunk starts to compare at; refused before any model loads."""
    result = runner.invoke(app, ["heal", str(tiny_models["untied"]), "--text", str(text), "-o", str(tmp_path / "o"),
                                 "--teacher", str(tiny_models["tied"]), mix, "1"])
    assert result.exit_code == 2, result.output
    assert "share one" in result.stderr and "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_generate_trains_on_the_teachers_continuations(tiny_models, text, tmp_path, monkeypatch):
    """--generate: the engine's training text is what the teacher wrote; the held-out split stays the user's."""
    import tokensurgeon.jobs.heal as heal_job

    seen = {}
    recover = heal_job.recover

    def spy(patched, train_texts, held_out, *args, **kwargs):
        seen["train"], seen["held_out"] = train_texts, held_out
        return recover(patched, train_texts, held_out, *args, **kwargs)

    monkeypatch.setattr(heal_job, "recover", spy)
    draft = shutil.copytree(tiny_models["untied"], tmp_path / "draft")
    report = heal(HealConfig(patched=draft, texts=(text,), out=tmp_path / "out", objective="distill",
                             train="embeddings", teacher=tiny_models["tied"], lr=1e-2, generate=3, **QUICK))
    assert list(seen["train"]) == ["teacher"] and list(seen["held_out"]) == ["spa.txt"]
    written = seen["train"]["teacher"].split("\n\n")
    assert len(written) == 3 and text.read_text(encoding="utf-8")[:20] in written[0]
    assert seen["held_out"]["spa.txt"] == split_held_out(text.read_text(encoding="utf-8"), QUICK["held_out"])[1]
    assert report.options["generate"] == 3 and report.texts[0].train_bytes is None and report.steps_run >= 1
    assert "3 greedy continuations the teacher wrote" in (tmp_path / "out" / "README.md").read_text()


def test_generate_without_a_teacher_is_one_line_exit_2(tiny_models, text, tmp_path):
    result = runner.invoke(app, ["heal", str(tiny_models["tied"]), "--text", str(text), "-o", str(tmp_path / "o"),
                                 "--objective", "lm", "--generate", "4"])
    assert result.exit_code == 2, result.output
    assert "--generate needs a teacher" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_options_reach_the_engine(patched, text, unseen, tmp_path):
    result = runner.invoke(app, ["heal", str(patched["tied"]), "--text", str(text), "-o", str(tmp_path / "out"),
                                 "--objective", "lm", "--train", "embeddings", "--eval-text", str(unseen),
                                 "--steps", "2", "--eval-every", "1", "--batch-size", "2", "--context", "32",
                                 "--held-out", "0.2", "--eval-max-bytes", "600", "--lr", "0.01",
                                 "--max-minutes", "5", "--lora-rank", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["texts"][0]["text"] == "spa.txt" and data["unseen"][0]["text"] == "ita.txt"
    assert (data["objective"], data["train"], data["steps_run"]) == ("lm", "embeddings", 2)
    assert data["options"]["lr"] == 0.01 and data["options"]["max_minutes"] == 5 and data["options"]["lora_rank"] == 2
    help_text = runner.invoke(app, ["heal", "--help"]).output
    assert help_text.count("Example") == 1 and "--objective" in help_text and "--save-adapter" in help_text
    assert "--hidden-mix" in help_text


@pytest.mark.parametrize("args, message", [
    (["--text", "TEXT"], "output"),  # -o points at an existing, non-empty directory
    ([], "heal needs text"),
    (["--text", "/nonexistent.txt"], "does not exist"),
    (["--text", "TEXT", "--eval-text", "/nonexistent.txt"], "does not exist"),
    (["--text", "TEXT", "--held-out", "1.5"], "--held-out"),
    (["--text", "TEXT", "--rows", "some"], "--rows"),
    (["--text", "TEXT", "--train", "some"], "--train"),
    (["--text", "TEXT", "--objective", "some"], "--objective"),
    (["--text", "TEXT", "--train", "rows", "--save-adapter"], "--save-adapter"),
    (["--text", "TEXT", "--teacher", "/nonexistent"], "--teacher"),
    (["--text", "TEXT", "--guard-task", "spelling"], "--guard-task spelling: not a task"),
    (["--text", "TEXT", "--guard-task", "none", "--guard-task", "arithmetic"], "--guard-task none"),
    (["--text", "TEXT", "--batch-size", "0"], "--batch-size"),
    (["--text", "TEXT", "--train", "all", "--body-lr", "0"], "--body-lr"),
    (["--text", "TEXT", "--generate", "-1"], "--generate"),
    (["--text", "TEXT", "--hidden-mix", "-1"], "--hidden-mix"),
    (["--text", "TEXT", "--objective", "lm", "--hidden-mix", "1"], "terms of --objective distill"),
    (["--text", "TEXT", "--objective", "lm", "--kl-mix", "1"], "terms of --objective distill"),
    (["--text", "TEXT", "--guard-text", "/nonexistent.txt"], "does not exist"),
    (["--text", "TEXT", "--guard-text", "TEXT"], "is also a --text"),
    (["--text", "TEXT", "--guard-task", "none", "--guard-text", "UNSEEN"], "no retention guard runs"),
    (["--text", "TEXT", "--guard-task", "arithmetic", "--guard-text", "UNSEEN"], "no retention guard runs"),
])
def test_user_errors_are_one_line_exit_2(patched, text, unseen, args, message):
    args = [{"TEXT": str(text), "UNSEEN": str(unseen)}.get(arg, arg) for arg in args]
    result = runner.invoke(app, ["heal", str(patched["tied"]), "-o", str(patched["untied"]), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("args", [["--objective", "distill"], ["--objective", "lm", "--guard-task", "retention"]])
def test_distill_without_a_teacher_is_one_line_exit_2(tiny_models, text, tmp_path, args):
    result = runner.invoke(app, ["heal", str(tiny_models["tied"]), "--text", str(text), "-o", str(tmp_path / "o"),
                                 *args])
    assert result.exit_code == 2, result.output
    assert "needs a teacher" in result.stderr and "--teacher" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["teacher", "teacher_parent", "eval_text_parent", "guard_text_parent",
                                   "patched"])
def test_output_never_is_or_holds_an_input(tiny_models, patched, text, tmp_path, where):
    work = tmp_path / "work"
    teacher = shutil.copytree(tiny_models["tied"], work / "teacher")
    evals, guards = work / "evals", work / "guards"
    evals.mkdir()
    guards.mkdir()
    eval_text, guard_text = shutil.copy(text, evals / "e.txt"), shutil.copy(text, guards / "g.txt")
    out = {"teacher": teacher, "teacher_parent": work, "eval_text_parent": evals, "guard_text_parent": guards,
           "patched": patched["tied"]}[where]
    snapshot = sorted(str(p) for p in work.rglob("*"))
    result = runner.invoke(app, ["heal", str(patched["tied"]), "--text", str(text), "--eval-text", str(eval_text),
                                 "--guard-text", str(guard_text), "--teacher", str(teacher), "-o", str(out),
                                 "--force"])
    assert result.exit_code == 2, result.output
    assert "choose another -o" in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert sorted(str(p) for p in work.rglob("*")) == snapshot and (patched["tied"] / "config.json").is_file()


def test_missing_patched_dir(text, tmp_path):
    result = runner.invoke(app, ["heal", str(tmp_path / "missing"), "--text", str(text), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a directory" in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["--rows", "new", "--train", "lora"], ["--rows", "all", "--objective", "distill"],
                                  ["--rows", "new", "--train", "embeddings"]])
def test_rows_alias_conflicting_with_train_or_objective_is_one_line_exit_2(patched, text, tmp_path, args):
    result = runner.invoke(app, ["heal", str(patched["tied"]), "--text", str(text), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert "conflicts with" in result.stderr and "--rows" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_rows_alias_agreeing_with_train_and_defaults_without_it(patched, text, tmp_path):
    agreeing = HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "o", rows="new", train="rows",
                          objective="lm")
    assert (agreeing.objective, agreeing.train) == ("lm", "rows")
    default = HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "o")
    assert (default.objective, default.train) == ("distill", "lora")  # docs/heal.md's default


def test_the_retention_guard_is_the_default_where_there_is_a_teacher(patched, tiny_models, text, tmp_path):
    """No --guard-task: retention with a teacher (the recorded base), nothing without; "none" turns it off."""
    quick = QUICK | {"guard_tasks": None, "steps": 2}
    report = heal(HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "taught", **LM_ROWS, **quick))
    assert report.teacher is not None and report.options["guard_tasks"] == ["retention"]
    assert set(report.tasks_before) == {"retention"} and 0 <= report.tasks_before["retention"] <= 1
    alone = heal(HealConfig(patched=tiny_models["tied"], texts=(text,), out=tmp_path / "alone", objective="lm",
                            train="embeddings", **quick))
    assert alone.teacher is None and alone.options["guard_tasks"] == [] and alone.tasks_before == {}
    off = HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "o", guard_tasks=("none",))
    assert off.guard_tasks_for(has_teacher=True) == ()
    given = HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "o", guard_tasks=("arithmetic",))
    assert given.guard_tasks_for(has_teacher=True) == ("arithmetic",)


def test_guard_text_gives_the_retention_guard_its_prompts(patched, text, tmp_path):
    """Two --guard-text files: the guard holds each one's agreement (keyed by its label), not the held-out split's."""
    guards = []
    for name, source in (("news", "lee_news.txt"), ("ita", "udhr/ita.txt")):
        guards.append(tmp_path / f"{name}.txt")
        guards[-1].write_text((CORPORA / source).read_text(encoding="utf-8")[:2000], encoding="utf-8")
    report = heal(HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / "o", guard_texts=tuple(guards),
                             **LM_ROWS, **(QUICK | {"guard_tasks": None, "steps": 2})))
    assert report.options["guard_texts"] == [str(g) for g in guards]
    assert set(report.tasks_before) == {"retention", "retention:news.txt", "retention:ita.txt"}
    assert all(0 <= value <= 1 for value in report.tasks_before.values())


def test_rows_mode_counts_the_free_rows_only(patched, text, tmp_path):
    source = open_checkpoint(patched["untied"])
    report = heal(HealConfig(patched=source.path, texts=(text,), out=tmp_path / "out", **LM_ROWS, **QUICK))
    width = read_embeddings(source)[0].shape[1]
    n_free = len(free_ids(source.path))
    assert n_free < source.vocab_rows  # a count of whole matrices would be vocab_rows x width each
    assert report.trainable == {source.input_name: n_free * width, source.output_name: n_free * width}


def test_copies_of_barely_trained_base_rows_train_under_rows(tiny_models, tmp_path):
    """Base with <0xNN> byte-fallback rows (Llama-2), byte-level donor (SmolLM2): the donor's lone bytes copy
    those rows, and --train rows moves the ones the text reads, like computed rows."""
    from tokensurgeon.vocab import build_vocabulary, load_tokenizer

    text = tmp_path / "tam.txt"
    text.write_text((CORPORA / "udhr" / "tam.txt").read_text(encoding="utf-8")[:2000], encoding="utf-8")
    patched = tmp_path / "patched"
    transplant(TransplantConfig(base=tiny_models["donor_llama2"], donor=tiny_models["tied"], out=patched))
    base_vocab = build_vocabulary(load_tokenizer(tiny_models["donor_llama2"]))
    provenance = [json.loads(line) for line in (patched / "provenance.jsonl").read_text().splitlines() if line]
    read = set(load_tokenizer(patched)(text.read_text(encoding="utf-8"))["input_ids"])
    copies = {row["id"]: bool(set(row["sources"]) & base_vocab.byte_fallback) for row in provenance
              if row["path"] == "copy" and row["id"] in read}
    byte_copies, other_copies = [i for i, b in copies.items() if b], [i for i, b in copies.items() if not b]
    assert len(byte_copies) >= 10 and other_copies
    report = heal(HealConfig(patched=patched, texts=(text,), out=tmp_path / "out", lr=1e-2, **LM_ROWS, **QUICK))
    assert report.improved
    before, after = read_embeddings(open_checkpoint(patched))[0], read_embeddings(open_checkpoint(tmp_path / "out"))[0]
    assert (after[byte_copies] != before[byte_copies]).any(dim=1).float().mean() > 0.5  # 4 short steps: most, not all
    assert torch.equal(after[other_copies], before[other_copies])  # rows the base trained stay copied



def test_rows_all_at_the_default_anchor_weight_pulls_copied_rows_back(patched, text, tmp_path):
    """`heal --rows all` (= --train embeddings) without --anchor-weight: the loss adds weight x the summed squared
    distance of each copied row from its start and nothing for the computed rows, which see the same kind of
    gradient. So the copied rows drift much less than the computed rows (at weight 0 both drift alike: 0.048).
    --all-rows: every row trains, not only those of the batch's tokens, so the drift is the anchor's doing."""
    source = patched["tied"]
    provenance = [json.loads(line) for line in (source / "provenance.jsonl").read_text().split("\n") if line]
    free = set(free_ids(source))
    copied = [row["id"] for row in provenance if row["path"] == "copy" and row["id"] not in free]
    computed = [row["id"] for row in provenance if row["path"] not in ("copy", "padding-mean")]
    assert len(copied) > 1000 and len(computed) > 1000
    result = runner.invoke(app, ["heal", str(source), "--text", str(text), "-o", str(tmp_path / "out"), "--rows", "all",
                                 "--all-rows", "--steps", "4", "--eval-every", "4", "--lr", "0.003",
                                 "--batch-size", "2", "--guard-task", "none",
                                 "--context", "32", "--held-out", "0.2", "--eval-max-bytes", "600", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["train"] == "embeddings" and data["best_step"] == 4 and data["options"]["anchor_weight"] > 0
    start = read_embeddings(open_checkpoint(source))[0].float()
    drift = (read_embeddings(open_checkpoint(tmp_path / "out"))[0].float() - start).norm(dim=1)
    assert drift[computed].mean() > 0.01  # trained rows moved
    assert drift[copied].mean() < 0.5 * drift[computed].mean()
