"""examples/notebook.ipynb, executed headlessly (nbclient) on the default backend: the states
and the batch display themselves as HTML with their parts told apart."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.gemma]

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def _outputs(cell: dict) -> tuple[str, str]:
    html = "".join(o.get("data", {}).get("text/html", "") for o in cell["outputs"])
    text = "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell["outputs"]
    )
    return html, text


def test_the_notebook_runs_and_shows_states_as_html() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute(
        cwd=str(NOTEBOOK.parent)
    )
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell["outputs"] if o["output_type"] == "error"]
    assert not errors, errors

    state_html, _ = _outputs(code[1])
    assert 'class="lmprog-state"' in state_html
    assert ">city</span>" in state_html and ">coastal</span>" in state_html  # named values
    assert "Paris" in state_html  # the generated object
    assert "token masks" in state_html and "logprob scoring" in state_html  # how each held
    assert "prefix cache:" in state_html and "done" in state_html
    assert "&lt;start_of_turn&gt;" not in state_html  # no roles in this program
    assert "Q: Which city is the capital of France?" in state_html  # literal text, shown

    _, repr_text = _outputs(code[2])
    assert repr_text.startswith("<ProgramState 'capital' done:") and "City(name=" in repr_text

    batch_html, _ = _outputs(code[3])
    assert 'class="lmprog-batch"' in batch_html and "3 programs: 3 done, 0 failed" in batch_html
    assert batch_html.count("<tr>") == 4

    _, report = _outputs(code[4])
    assert report.startswith("prefix cache: 3 requests")

    _, partials = _outputs(code[5])
    lines = partials.strip().splitlines()
    assert len(lines) >= 3 and lines[-1].startswith("name=")  # partials, then the final City
