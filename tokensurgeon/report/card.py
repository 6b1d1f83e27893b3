"""The model card: a README.md in the Hugging Face convention for every output (transplant, heal, export).

YAML front matter first (``base_model``, ``library_name: transformers``, ``pipeline_tag``, ``tags`` with
``tokensurgeon`` and ``tokenizer-transplant``, and the base card's ``license`` when it states one), then
what was done: the donor, the method and its options, the row counts, the bits-per-byte table, the
warnings, and the command that made it.

A card the base model had is never overwritten nor merged: it is copied next to the new one as
BASE_MODEL_CARD.md and linked from it. heal and export keep their source's card and append a section.

``base_model`` must be a Hub id for the Hub to link the model tree; a local directory has none, so the
card uses the id found in the base card or config (``_name_or_path`` shaped ``org/name``), else the
directory name, and says so in a YAML comment.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .models import TransplantReport

CARD = "README.md"
BASE_CARD = "BASE_MODEL_CARD.md"
TAGS = ("tokensurgeon", "tokenizer-transplant")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


def invoked_command(fallback: str = "", argv: list[str] | None = None) -> str:
    """The command line as typed when running as the tokensurgeon program (program name shortened), else
    fallback: a library call has no command line of its own, the caller says what it did."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path()
    if program.name == "tokensurgeon" or program.parts[-2:] == ("tokensurgeon", "__main__.py"):
        return shlex.join(["tokensurgeon"] + argv[1:])
    return fallback or "(run from Python, not from the command line)"


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML between the --- lines, the rest); ("", text) when there is none."""
    match = _FRONT.match(text)
    return (match.group(1), text[match.end():]) if match else ("", text)


def _scalar(front: str, key: str) -> str | None:
    """A top-level scalar of simple YAML front matter (key: value), quotes removed."""
    match = re.search(rf"^{re.escape(key)}:[ \t]*(.+?)[ \t]*$", front, re.M)
    if not match or match.group(1).startswith(("[", "{", "|", ">", "#")):
        return None
    return match.group(1).strip("'\"") or None


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON's double-quoted strings are valid YAML."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else json.dumps(value)


def hub_id(base_dir: Path) -> str | None:
    """The base's Hub id, when its card or config names one."""
    card = base_dir / CARD
    if card.is_file():
        front, _ = split_front_matter(card.read_text(encoding="utf-8", errors="replace"))
        for key in ("model_id", "base_model"):
            value = _scalar(front, key)
            if value and _HUB_ID.match(value):
                return value
    config = base_dir / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        for key in ("_name_or_path", "_model_name_or_path"):
            value = data.get(key)
            if isinstance(value, str) and _HUB_ID.match(value) and not Path(value).exists():
                return value
    return None


def front_matter(base_model: str, *, guessed: bool, tags: list[str], license: str | None = None) -> str:
    lines = ["---", f"base_model: {_yaml(base_model)}"]
    if guessed:
        lines.append("# base_model: a local directory name; replace it with the Hub id before pushing")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {_yaml(tag)}" for tag in dict.fromkeys(list(TAGS) + tags)]
    if license:
        lines.append(f"license: {_yaml(license)}")
    return "\n".join(lines + ["---", ""])


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def transplant_body(report: TransplantReport, command: str, *, base_card: bool) -> str:
    """The card's markdown after the front matter."""
    base, donor, method, output = report.base, report.donor, report.method, report.output
    name = Path(output["path"]).name
    lines = [f"# {name}", "",
             f"`{Path(base['path']).name}` with the tokenizer of `{Path(donor['path']).name}`, transplanted by "
             f"tokensurgeon {report.version}: the transformer is the base model's, unchanged; the "
             f"embedding rows of tokens the two vocabularies share are copied, the others computed by "
             f"`{method['name']}`.", "",
             "## How it was made", "",
             f"- Base model: `{base['path']}` ({base['kind']}, {base['vocab_size']:,} tokens, hidden size "
             f"{base['hidden_size']}, {'tied' if base['tied'] else 'untied'} embeddings)",
             f"- Donor tokenizer: `{donor['path']}` ({donor['kind']}, {donor['vocab_size']:,} tokens, "
             f"{'a full model' if donor['is_model'] else 'tokenizer only'})",
             f"- Method: `{method['name']}`, options {json.dumps(method.get('options') or {}, sort_keys=True)}, "
             f"seed {method.get('seed')}; chat template from the {method.get('chat_template')}",
             f"- Output: {output['rows']:,} embedding rows", "",
             "Made with:", "", "```sh", command, "```", "",
             "## Vocabulary overlap", ""]
    lines += markdown_table(["rows", "count"], [[kind, f"{count:,}"] for kind, count in report.counts.items()], "lr")
    if report.evaluation:
        lines += ["", "## Bits per byte (lower is better; the same text for both models)", ""]
        lines += markdown_table(["text", "bytes", "base", "patched", "patched / base"],
                               [[row.text, f"{row.bytes:,}", f"{row.base_bpb:.4f}", f"{row.patched_bpb:.4f}",
                                 f"{row.ratio:.3f}"] for row in report.evaluation], "lrrrr")
    else:
        lines += ["", "No bits-per-byte evaluation was run (`--eval-text`)."]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in report.warnings]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
              f'model = AutoModelForCausalLM.from_pretrained("{name}")', "```", "",
              "report.md, report.html and report.json hold the full transplant report; provenance.jsonl says where "
              "each embedding row came from."]
    if base_card:
        lines += ["", "## The base model's card", "",
                  f"The base model's own card is kept unchanged in [{BASE_CARD}]({BASE_CARD}); its license and terms "
                  "apply to this model too."]
    return "\n".join(lines) + "\n"


def write_transplant_card(report: TransplantReport, out_dir: Path, *, base_dir: Path,
                          command: str | None = None) -> Path:
    """README.md for a transplant output (and BASE_MODEL_CARD.md when the base had a card). Returns the card path."""
    out_dir, base_dir = Path(out_dir), Path(base_dir)
    base_readme = base_dir / CARD
    license = None
    if base_readme.is_file():
        shutil.copyfile(base_readme, out_dir / BASE_CARD)
        license = _scalar(split_front_matter(base_readme.read_text(encoding="utf-8", errors="replace"))[0], "license")
    found = hub_id(base_dir)
    text = front_matter(found or base_dir.name, guessed=found is None, tags=[report.method["name"]], license=license)
    text += "\n" + transplant_body(report, command or invoked_command(), base_card=base_readme.is_file())
    (out_dir / CARD).write_text(text, encoding="utf-8")
    return out_dir / CARD


def append_section(source_dir: Path, out_dir: Path, title: str, lines: list[str], command: str | None = None,
                   tags: tuple[str, ...] = ()) -> Path:
    """heal / export: the source's card (or a minimal one) with one more section and tags; the source is not touched."""
    source = Path(source_dir) / CARD
    text = source.read_text(encoding="utf-8") if source.is_file() else ""
    front, body = split_front_matter(text)
    if not front:
        found = hub_id(Path(source_dir))
        head = front_matter(found or Path(source_dir).name, guessed=found is None, tags=list(tags))
        body = body or f"# {Path(out_dir).name}\n"
    else:
        missing = [tag for tag in list(TAGS) + list(tags)
                   if not re.search(rf"^-\s*\"?{re.escape(tag)}\"?\s*$", front, re.M)]
        if missing and re.search(r"^tags:\s*$", front, re.M):
            front = re.sub(r"^tags:\s*$", lambda m: "tags:\n" + "\n".join(f"- {_yaml(t)}" for t in missing), front,
                           count=1, flags=re.M)
        elif missing:
            front += "\ntags:\n" + "\n".join(f"- {_yaml(t)}" for t in missing)
        head = f"---\n{front}\n---\n"
    section = ["", f"## {title}", ""] + lines + ["", "Made with:", "", "```sh", command or invoked_command(), "```", ""]
    Path(out_dir, CARD).write_text(head + ("\n" if not body.startswith("\n") else "") + body.rstrip("\n") + "\n"
                                   + "\n".join(section), encoding="utf-8")
    return Path(out_dir) / CARD
