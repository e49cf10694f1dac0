"""The repository stands on its own: its links resolve and it cites nothing outside it."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def _anchors(path: str):
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  anchors, fenced = set(), False
  for line in lines:
    if line.startswith("```"):
      fenced = not fenced
    match = None if fenced else _HEADING.match(line)
    if match:
      anchors.add(_slug(match.group(1)))
    anchors.update(re.findall(r'<a (?:name|id)="([^"]+)"', line))
  return anchors


def _markdown_files():
  return [os.path.join(ROOT, "README.md")] + sorted(
      glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)) + sorted(
      glob.glob(os.path.join(ROOT, "*", "README.md")))


def test_slug_follows_githubs_rule():
  assert _slug("The library's modules") == "the-librarys-modules"
  assert _slug("2. Training: `deepbof-train`") == "2-training-deepbof-train"


@pytest.mark.parametrize("path", _markdown_files(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(path):
  with open(path, encoding="utf-8") as f:
    text = f.read()
  broken = []
  for target in _LINK.findall(text):
    if re.match(r"^[a-z]+://|^mailto:", target):
      continue
    file_part, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
        if file_part else path
    if not os.path.exists(resolved):
      broken.append(target)
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      broken.append(target)
  assert not broken, f"{os.path.relpath(path, ROOT)}: links that do not resolve: {broken}"


def test_readme_is_short():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) <= 250


def test_nothing_cites_documents_outside_the_repository():
  # Written so that this line does not match itself.
  pattern = re.compile(r"\bS[P]EC\b|DESIGN[.]md|[Ii]ssue [0-9]")
  offending = []
  for top in ("deepbof_tf", "beam_jobs", "trainer", "serving", "tests", "benchmarks"):
    for path in glob.glob(os.path.join(ROOT, top, "**", "*"), recursive=True):
      if not path.endswith((".py", ".md", ".c", ".txt", ".config")):
        continue
      with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
          if pattern.search(line):
            offending.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    offending += [f"README.md: {line.strip()}" for line in f if pattern.search(line)]
  assert not offending, "\n".join(offending)


def test_license_exists():
  assert os.path.getsize(os.path.join(ROOT, "LICENSE")) > 1000
