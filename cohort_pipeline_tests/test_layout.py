"""The rooms by role hold: the Dagster-free rooms never import Dagster, even indirectly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cohort_pipeline"
DAGSTER_FREE = ("privacy", "storage", "logic", "settings.py", "schema.py", "policy.py")


def dagster_free_modules() -> list[str]:
    found = []
    for room in DAGSTER_FREE:
        paths = [PACKAGE / room] if room.endswith(".py") else sorted((PACKAGE / room).glob("*.py"))
        for path in paths:
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            found.append(".".join(p for p in parts if p != "__init__"))
    return found


def test_the_dagster_free_rooms_import_no_dagster():
    modules = dagster_free_modules()
    assert "cohort_pipeline.privacy.measurements" in modules and len(modules) > 20
    probe = (
        "import importlib, sys\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')[:3])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"a Dagster-free room imports Dagster: {out}"


def test_the_probe_sees_an_import_of_dagster():
    probe = "import sys, cohort_pipeline.defs.common\nprint('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    assert out.strip() == "True"
