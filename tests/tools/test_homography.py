"""tools/homography.py: the matrix of points matched by hand, as a ``register:`` section the config takes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from streamfuse.config import config_from_dict


def _points(matrix: np.ndarray, ir: list[tuple[float, float]]) -> list[str]:
    vis = [matrix @ (x, y, 1.0) for x, y in ir]
    return [f"{x},{y}={u / w:.4f},{v / w:.4f}" for (x, y), (u, v, w) in zip(ir, vis)]


def test_points_of_a_known_homography_give_it_back_as_a_config_section(tool, tmp_path, capsys):
    truth = np.array([[1.9, 0.05, 12.0], [-0.03, 2.1, 7.0], [1e-5, 2e-5, 1.0]])
    corners = [(10, 12), (300, 8), (310, 230), (15, 235), (160, 120), (80, 200)]
    ir = np.zeros((240, 320), np.uint8)
    ir[60:180, 80:240] = 200  # a warm block: its edges go over the visible frame in red
    vis_path, ir_path, check = tmp_path / "vis.png", tmp_path / "ir.png", tmp_path / "check.png"
    cv2.imwrite(str(ir_path), ir)
    cv2.imwrite(str(vis_path), np.full((520, 700, 3), 90, np.uint8))
    tool("homography").main([*_points(truth, corners), "--ir", str(ir_path), "--vis", str(vis_path),
                             "--overlay", str(check)])
    out = capsys.readouterr().out
    section = yaml.safe_load(out)["register"]
    np.testing.assert_allclose(np.reshape(section["homography"], (3, 3)), truth, rtol=1e-3, atol=1e-3)
    assert "6 points, RMS error 0.00 visible px" in out
    assert config_from_dict({"register": section}).register.homography == tuple(section["homography"])
    red = (cv2.imread(str(check)) == (0, 0, 255)).all(2)
    rows, cols = np.nonzero(red)  # the block's outline, warped: around x = 1.9 * 80 + 12 ... on the visible frame
    assert red.any() and abs(cols.min() - (truth @ (80, 60, 1))[0] / (truth @ (80, 60, 1))[2]) < 4


@pytest.mark.parametrize("points, message", [
    (["1,1=2,2", "5,1=9,2", "5,5=9,9"], "3 point pairs: a homography needs at least 4"),
    (["0,0=0,0", "1,1=2,2", "2,2=4,4", "3,3=6,6"], "do not fix a homography"),
])
def test_too_few_or_degenerate_points_are_one_line(tool, points, message):
    with pytest.raises(SystemExit, match=message):
        tool("homography").main(points)


@pytest.mark.parametrize("point", ["1;1=2,2", "nan,1=2,2", "1,1=inf,2"])  # not a number: "three on one line" was said
def test_a_point_not_written_as_a_pair_is_an_argument_error(tool, capsys, point):
    with pytest.raises(SystemExit) as stop:
        tool("homography").main(["1,1=2,2", point, "3,3=4,4", "5,5=6,6"])
    assert stop.value.code == 2 and f"'{point}' is not IR_X,IR_Y=VIS_X,VIS_Y" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["ir", "vis"])
def test_an_overlay_that_names_an_input_frame_is_refused(tool, tmp_path, capsys, which):
    # it wrote the overlay over the input frame and exited 0
    paths = {"ir": tmp_path / "ir.png", "vis": tmp_path / "vis.png"}
    cv2.imwrite(str(paths["ir"]), np.zeros((24, 32), np.uint8))
    cv2.imwrite(str(paths["vis"]), np.full((24, 32, 3), 90, np.uint8))
    before = paths[which].read_bytes()
    (tmp_path / "same.png").hardlink_to(paths[which])  # by any name
    with pytest.raises(SystemExit) as stop:
        tool("homography").main(["1,1=2,2", "5,1=9,2", "5,5=9,9", "1,5=2,9", "--ir", str(paths["ir"]), "--vis",
                                 str(paths["vis"]), "--overlay", str(tmp_path / "same.png")])
    assert stop.value.code == 2 and "is one of the input frames" in capsys.readouterr().err
    assert paths[which].read_bytes() == before


POINTS = ["1,1=2,2", "5,1=9,2", "5,5=9,9", "1,5=2,9"]


@pytest.mark.parametrize("case", ["missing", "truncated_jpeg"])
def test_a_frame_that_cannot_be_read_is_one_line_and_writes_nothing(tool, tmp_path, case):
    # cv2.imread took a truncated JPEG (its grey lower half drawn on) and said a missing file in two lines of its own
    vis = tmp_path / "vis.jpg"
    data = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))[1].tobytes()
    vis.write_bytes(data[:len(data) // 2])
    cv2.imwrite(str(tmp_path / "ir.png"), np.zeros((48, 64), np.uint8))
    ir = tmp_path / ("gone.png" if case == "missing" else "ir.png")
    with pytest.raises(SystemExit) as stop:
        tool("homography").main([*POINTS, "--ir", str(ir), "--vis", str(vis), "--overlay", str(tmp_path / "o.png")])
    why = f"{ir}: the file is gone" if case == "missing" else f"{vis}: Premature end of JPEG file"
    assert stop.value.code == f"homography.py: error: cannot read image {why}" and not (tmp_path / "o.png").exists()


def test_a_16_bit_ir_frame_is_stretched_for_its_edges(tool, tmp_path):
    ir = np.full((48, 64), 30000, np.uint16)
    ir[12:36, 16:48] = 30400  # a warm block 400 counts above the rest: its top 8 bits are all but flat
    cv2.imwrite(str(tmp_path / "ir.png"), ir)
    cv2.imwrite(str(tmp_path / "vis.png"), np.full((48, 64, 3), 90, np.uint8))
    identity = ["0,0=0,0", "63,0=63,0", "63,47=63,47", "0,47=0,47"]
    tool("homography").main([*identity, "--ir", str(tmp_path / "ir.png"), "--vis",
                             str(tmp_path / "vis.png"), "--overlay", str(tmp_path / "o.png")])
    assert (cv2.imread(str(tmp_path / "o.png")) == (0, 0, 255)).all(2).any()


def test_an_overlay_not_named_png_is_refused(tool, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        tool("homography").main([*POINTS, "--ir", "ir.png", "--vis", "vis.png", "--overlay", str(tmp_path / "o.jpg")])
    assert stop.value.code == 2 and "written as a PNG; give a name ending in .png" in capsys.readouterr().err


def test_an_overlay_named_in_capitals_is_written(tool, tmp_path):
    cv2.imwrite(str(tmp_path / "ir.png"), np.full((12, 16), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "vis.png"), np.full((12, 16, 3), 90, np.uint8))
    tool("homography").main([*POINTS, "--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"),
                             "--overlay", str(tmp_path / "O.PNG")])
    assert cv2.imread(str(tmp_path / "O.PNG")).shape == (12, 16, 3)


def test_points_off_one_plane_are_fitted_and_warned_of(tool, capsys):
    ir = [(10, 12), (300, 8), (310, 230), (15, 235), (160, 120), (80, 200)]
    vis = [(2 * x + 5, 2 * y + 3) for x, y in ir]
    vis[4] = (vis[4][0] + 30, vis[4][1] - 20)  # one point misread
    tool("homography").main([f"{x},{y}={u},{v}" for (x, y), (u, v) in zip(ir, vis)])
    out, err = capsys.readouterr()
    matrix = np.reshape(yaml.safe_load(out)["register"]["homography"], (3, 3))
    mapped = cv2.perspectiveTransform(np.array([ir], np.float64), matrix)[0]
    rms = np.sqrt(((mapped - np.array(vis, np.float64)) ** 2).sum(1).mean())  # of the distances, in visible px
    assert rms > 3 and f"6 points, RMS error {rms:.2f} visible px" in out
    assert err == f"homography.py: the points fit one plane only to {rms:.1f} px: check them, or the scene is too " \
                  "near for one matrix\n"
    tool("homography").main([f"{x},{y}={2 * x + 5},{2 * y + 3}" for x, y in ir])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("given", [["--ir"], ["--vis"]])
def test_an_overlay_needs_both_frames(tool, tmp_path, capsys, given):
    cv2.imwrite(str(tmp_path / "f.png"), np.zeros((24, 32), np.uint8))
    with pytest.raises(SystemExit) as stop:
        tool("homography").main(["1,1=2,2", "5,1=9,2", "5,5=9,9", "1,5=2,9", *given, str(tmp_path / "f.png"),
                                 "--overlay", str(tmp_path / "o.png")])
    assert stop.value.code == 2 and "--overlay needs --ir and --vis" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
