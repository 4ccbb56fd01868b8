"""Write docs/options.md from the setting declarations (the tests fail when it is stale)."""

from __future__ import annotations

from pathlib import Path

from uwsgirouter.config import render_options_markdown

if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "options.md"
    target.write_text(render_options_markdown(), encoding="utf-8")
    print(f"wrote {target}")
