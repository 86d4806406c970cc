"""Rewrite one section of docs/benchmarks.md, leaving the others alone."""

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'benchmarks.md'


def write_section(markdown, *, heading, path=DOCS):
    """Replace the section that starts with ``heading`` (or append it).

    A section runs from its ``## `` heading line to the next ``## `` heading.
    """
    text = path.read_text() if path.exists() else '# Benchmarks\n'
    start = text.find(heading + '\n')
    if start == -1:
        text = text.rstrip('\n') + '\n\n' + markdown
    else:
        end = text.find('\n## ', start + len(heading))
        rest = '' if end == -1 else '\n' + text[end + 1 :]
        text = text[:start] + markdown + rest
    path.write_text(text)
