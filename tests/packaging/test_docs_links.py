"""Every relative link in the repository's markdown points at a file inside the repository that exists
(docs cite only the project's own files; a moved or renamed file breaks its links here, not in a reader's
browser)."""

from __future__ import annotations

import re
import subprocess

from tests.support.paths import ROOT

LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list:
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines() if line]


def broken_links(path, root=ROOT) -> list[str]:
    bad = []
    for m in LINK_RE.finditer(path.read_text(errors="replace")):
        target = m.group(1)
        if re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", target):
            continue  # a URL or an anchor in the same page
        rel = target.split("#")[0]
        resolved = (path.parent / rel).resolve()
        if not resolved.is_relative_to(root.resolve()):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
    return bad


def test_every_relative_link_resolves_inside_the_repository():
    files = markdown_files()
    assert len(files) > 10, files  # the README, docs/, the chart's and the results' pages
    broken = {str(p.relative_to(ROOT)): b for p in files if (b := broken_links(p))}
    assert not broken, broken


def test_the_checker_finds_a_missing_and_an_outside_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text("# map\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("[a](architecture.md) [b](no-such-page.md) [c](../../etc/passwd) [d](https://x.org/y) [e](#top)\n")
    assert broken_links(page, tmp_path) == [
        "no-such-page.md (no such file)",
        "../../etc/passwd (outside the repository)",
    ]
