"""docs/schemas/*.json are what docs/schemas/make_schemas.py writes: a schema
edited by hand (and lost at the next regeneration) fails here."""
import os
import subprocess
import sys
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schemas_are_the_generators_output(tmp_path):
    subprocess.run([sys.executable, str(SCHEMAS / "make_schemas.py")], check=True,
                   env={**os.environ, "IDLEMAP_SCHEMA_OUT": str(tmp_path)})
    made = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    assert made.keys() == committed.keys()
    stale = [n for n in made if made[n] != committed[n]]
    assert not stale, f"regenerate with python3 docs/schemas/make_schemas.py: {stale}"
