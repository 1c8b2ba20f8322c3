"""pop-teach's refusals, each before any model loads: the shipped example library is never written
(a copy of it is), and a click outside the frame is reported at once. The model load is replaced by
one that fails the test, so a refusal that came after it would show."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from pop_ros.clients.ros_client import LIBRARY
from test.test_bag import write_bag


@pytest.fixture
def teach(monkeypatch, capsys):
    """Run pop-teach in-process, its model load failing the test; returns (exit code, stderr)."""
    from pop_ros.cli import bag
    from pop_ros.pipeline import PartPointer

    def no_models(*_args, **_kwargs):
        raise AssertionError("pop-teach loaded the models before refusing its arguments")

    monkeypatch.setattr(PartPointer, "from_preset", staticmethod(no_models))

    def invoke(*argv):
        code = bag.teach_main([*map(str, argv), "--preset", "tiny"])
        return code, capsys.readouterr().err

    return invoke


def folder_digest(folder) -> dict:
    """Every file under `folder` (relative path -> sha256): what the shipped example holds."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return write_bag(tmp_path_factory.mktemp("teach") / "rec", "sqlite3", 2, "bgr8", depth=None, camera=None)


@pytest.mark.parametrize("name", ["library.yaml", "new_set.yaml"])
def test_teaching_into_the_shipped_example_is_refused_before_the_models_load(teach, recording, name):
    shipped = LIBRARY.parent
    before = folder_digest(shipped)
    code, stderr = teach(recording, "--time", "0", "--click", "10,10", "--set", "lid", "--library", shipped / name)
    assert code == 2, stderr
    assert "shipped example library" in stderr and "read-only" in stderr and "cp -r" in stderr
    assert folder_digest(shipped) == before  # no rewrite, no .bak, no library_images/


def test_a_copy_of_the_shipped_example_is_accepted(teach, recording, tmp_path):
    copy = tmp_path / "my_supports"
    shutil.copytree(LIBRARY.parent, copy)
    # Every argument passes its checks: the next step is the model load, which this fixture refuses.
    with pytest.raises(AssertionError, match="loaded the models"):
        teach(recording, "--time", "0", "--click", "10,10", "--set", "lid", "--library", copy / LIBRARY.name)


@pytest.mark.parametrize(
    "click, reason",
    [("400,10", "outside its 320x240 image"), ("-3,10", "outside its 320x240 image")],
)
def test_a_click_outside_the_frame_is_refused_before_the_models_load(teach, recording, tmp_path, click, reason):
    library = tmp_path / "mine.yaml"
    code, stderr = teach(recording, "--time", "0", f"--click={click}", "--set", "lid", "--library", library)
    assert code == 2 and reason in stderr, stderr
    assert not library.exists()


def test_a_bad_set_name_is_refused_before_the_models_load(teach, recording, tmp_path):
    code, stderr = teach(recording, "--time", "0", "--click", "10,10", "--set", " ", "--library", tmp_path / "a.yaml")
    assert code == 2 and "support set name must be a non-empty string" in stderr, stderr


def test_the_node_refuses_to_write_into_the_shipped_example(inprocess):
    ros, node, configured = inprocess("shippedlib", f"support_library:={LIBRARY}", "library_writable:=true")
    assert node.pointer is None
    assert "shipped example library" in node.configure_error and "read-only" in node.configure_error
