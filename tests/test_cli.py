import re
import subprocess
import sys

import numpy as np
import pytest

from vcorr.io import DAVIS_PALETTE, atomic_file, read_index_png, write_index_png
from vcorr.errors import VcorrError
from PIL import Image


def _listed_subcommands(*args: str) -> set[str]:
    """The sub-commands an argparse --help lists (indented `name  help` lines under the choices)."""
    result = subprocess.run([sys.executable, "-m", "vcorr", *args, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"^    (\w+)(?:  |$)", result.stdout, re.M))


def test_help_lists_the_subcommands():
    assert _listed_subcommands() == {"data", "export", "fidelity", "propagate", "report", "score", "train"}
    assert _listed_subcommands("score") == {"davis", "jhmdb", "vip"}
    assert _listed_subcommands("data") >= {"fetch", "extract", "index", "list", "demo"}


def test_index_png_round_trip_keeps_ids_and_davis_palette(tmp_path):
    ids = np.random.default_rng(0).integers(0, 5, size=(7, 9), dtype=np.uint8)
    write_index_png(tmp_path / "a.png", ids)
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_index_png(tmp_path / "a.png"), ids)
    assert DAVIS_PALETTE[3 * 2 : 3 * 2 + 3] == [0, 128, 0]


def test_rgb_png_is_refused_with_its_name(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(VcorrError, match="rgb.png.*not an indexed"):
        read_index_png(tmp_path / "rgb.png")


def test_atomic_file_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
