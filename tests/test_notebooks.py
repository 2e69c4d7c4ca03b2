"""The notebooks run in a real Jupyter kernel (this interpreter), and are committed clean.

Each notebook is executed by ``nbclient`` in an ipykernel started from this
venv's Python, against the sandbox, and its outputs are checked: the plots
rendered, the players carry audio, the roster lists the speakers. A broken cell
fails the test with its traceback.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import re
import warnings
import wave
from collections.abc import Callable
from pathlib import Path

import nbformat
import numpy as np
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOKS_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 60  # seconds per cell; each notebook takes a few seconds in all

Outputs = dict[str, list[NotebookNode]]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """Kernel specs holding one ``python3`` for this interpreter, nothing else.

    The user's and the system's kernel specs may point at another Python, and
    nothing is installed into the user's home.
    """
    path = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(path / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    return KernelSpecManager(kernel_dirs=[str(path)])


def execute(name: str, kernels: KernelSpecManager) -> Outputs:
    """Run a notebook top to bottom; return each code cell's outputs by cell id."""
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=kernels)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    # The sandbox, never a real channel: no Discord credentials reach the kernel.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISCORD_")}
    client.execute(env=env)
    outputs = {cell.id: cell.outputs for cell in notebook.cells if cell.cell_type == "code"}
    for cell_id, cell_outputs in outputs.items():
        for output in cell_outputs:
            # Warnings and the log records of a failing subscriber land on stderr.
            assert output.get("name") != "stderr", f"{name} [{cell_id}]: {output.text}"
    return outputs


def text(outputs: list[NotebookNode]) -> str:
    return "".join(output.text for output in outputs if output.output_type == "stream")


def data(outputs: list[NotebookNode], mime: str) -> list[str]:
    return [output.data[mime] for output in outputs if mime in output.get("data", {})]


def players(outputs: list[NotebookNode]) -> list[np.ndarray]:
    """The audio of each ``IPython.display.Audio`` player, as int16 samples."""
    clips = []
    for html in data(outputs, "text/html"):
        for encoded in re.findall(r"data:audio/wav;base64,([A-Za-z0-9+/=]+)", html):
            with wave.open(io.BytesIO(base64.b64decode(encoded))) as reader:
                clips.append(np.frombuffer(reader.readframes(reader.getnframes()), np.int16))
    return clips


def check_explore_voice(out: Outputs) -> None:
    speakers = re.search(r"sandbox speakers: (.+)", text(out["connect"]))
    assert speakers, text(out["connect"])
    ids = speakers[1].split(", ")
    assert len(ids) == 3
    # Updated in place: one roster and one plot, however many refreshes.
    assert [list(output.data) for output in out["live"]] == [
        ["text/plain", "text/html"],
        ["text/plain", "image/png"],
    ]
    roster = data(out["live"], "text/html")[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in roster.split("<tr style")[1:]]
    assert len(rows) == 4, roster  # the three, and the one who joined
    assert {row[1] for row in rows} >= {f"<code>{user_id}</code>" for user_id in ids}, roster
    assert all(int(row[6]) > 25 for row in rows), roster  # packets: everyone talked
    presence = [row[-1].split(" at ")[0].split(" since ")[0] for row in rows]
    assert sorted(presence) == ["here", "here", "here", "left"], roster  # the first one left
    clips = players(out["listen"])
    assert len(clips) == 5  # four users and the mix
    assert all(np.abs(clip.astype(np.int32)).max() > 1000 for clip in clips)  # everyone was heard
    assert data(out["dave"], "image/png")
    epochs = re.findall(r"<tr><td>[\d.]+ s</td><td>(\d+)</td>", data(out["dave"], "text/html")[0])
    assert len(epochs) >= 3, epochs  # the first, the join, the leave
    assert "frames decrypted" in text(out["dave"])
    assert "rxvoice logged 0 warnings" in text(out["close"])


def check_compose_pipelines(out: Outputs) -> None:
    for cell in ("packets", "decode", "mix", "resample", "buffer", "vad"):
        assert len(data(out[cell], "image/png")) == 1, cell
    assert len(players(out["mix"])) == 1
    assert "16000 Hz, 1 channel(s)" in text(out["resample"])
    utterances = [h for h in data(out["vad"], "text/html") if h.startswith("utterance")]
    assert utterances, data(out["vad"], "text/html")
    pitches = [float(p) for h in utterances for p in re.findall(r"pitch (\d+) Hz", h)]
    assert pitches and all(abs(p - 300) < 20 for p in pitches), utterances
    # Cut at the pauses: the speaker talks 1 s at a time (then 0.1 s of silence frames).
    lengths = [float(s) for h in utterances for s in re.findall(r"([\d.]+) s long", h)]
    assert len(lengths) == len(utterances) and max(lengths) < 1.6, utterances
    assert max(lengths) > 0.9, utterances
    assert len(players(out["vad"])) == len(utterances)
    assert "300 Hz: 0.50 s at 16000 Hz" in text(out["live"])
    assert "rxvoice logged 0 warnings" in text(out["live"])


def check_marble_testing(out: Outputs) -> None:
    # The diagram the notebook's text explains: the detector gives up mid-speech.
    assert text(out["first"]).strip() == "---on0--off2(on2)----------off8--------|"
    assert text(out["test"]).count("passed:") == 3
    for cell in ("first", "middle", "test"):
        assert len(data(out[cell], "image/png")) == 1, cell


CHECKS: dict[str, Callable[[Outputs], None]] = {
    "explore_voice.ipynb": check_explore_voice,
    "compose_pipelines.ipynb": check_compose_pipelines,
    "marble_testing.ipynb": check_marble_testing,
}


def test_every_notebook_is_checked() -> None:
    assert {path.name for path in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs(name: str, kernels: KernelSpecManager) -> None:
    CHECKS[name](execute(name, kernels))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_clean(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MissingIDFieldWarning and friends
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        nbformat.validate(notebook)
    assert (notebook.nbformat, notebook.nbformat_minor) >= (4, 5)  # cell ids
    assert notebook.metadata.kernelspec.name == "python3"
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    for cell in cells:
        assert re.fullmatch(r"[a-z0-9-]+", cell.id), cell.id
        if cell.cell_type == "code":
            # Clear them in JupyterLab (Edit > Clear Outputs of All Cells) before committing.
            assert cell.outputs == [] and cell.execution_count is None, f"stale outputs: {cell.id}"
    # A document: each code cell comes after text that explains it.
    for before, cell in itertools.pairwise(cells):
        assert not (before.cell_type == cell.cell_type == "code"), f"no text before {cell.id}"
