"""Records are pydantic models built on first use: ``import nbdurable`` pays for neither pydantic nor them."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from nbdurable import _records

HEAVY = ("pydantic", "IPython", "ipywidgets", "celpy", "psutil", "numpy", "pandas", "pyarrow", "polars")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_import_loads_no_heavy_package() -> None:
    """``import nbdurable`` leaves pydantic, IPython, widgets, CEL, psutil and the data libraries unloaded."""
    assert _modules_after("import nbdurable") == []


def test_the_first_record_builds_the_models() -> None:
    """Reaching a record model imports pydantic then, and only then."""
    assert _modules_after("import nbdurable\nfrom nbdurable import _records\n_records.RunRecord") == ["pydantic"]


def test_records_keep_their_contract() -> None:
    """Built lazily, the records are still pydantic models that refuse unknown fields and carry ``v``."""
    import pydantic

    rec = _records.ErrorRecord(name="E", message="m")
    assert isinstance(rec, pydantic.BaseModel)
    assert rec.v == _records.SCHEMA_VERSION
    with pytest.raises(pydantic.ValidationError):
        _records.ErrorRecord(name="E", message="m", surprise=1)  # type: ignore[call-arg]


def test_an_unknown_name_is_an_attribute_error() -> None:
    """The lazy module answers only for the names it has."""
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = _records.Nope  # type: ignore[attr-defined]
