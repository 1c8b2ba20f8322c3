"""A writable support library: persistence, safe file names, editing, concurrency, and a writer
killed between every two of its steps (pure Python: no node, no models except the cache test)."""

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pop_ros.supports import KILL_AFTER_STEP_ENV, SupportError, SupportLibrary, set_folder_name
from test.conftest import random_image

AWKWARD_NAMES = ["../../escape", "mug handle", "Über-Griff ✓ 把手", "a/b", "a_b", "A b", ".", "..", "/abs"]


def write_png(path, image_rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


def make_library(folder, rng):
    """A library YAML with set 'mug' (exemplars A, a missing file, B, C) and a broken set."""
    images = {name: random_image(rng, 40 + i, 50 + i) for i, name in enumerate("ABC")}
    for name, image in images.items():
        write_png(folder / "images" / f"{name}.png", image)
    (folder / "library.yaml").write_text(
        textwrap.dedent(
            """
            sets:
              mug:
                query: handle of the mug
                exemplars:
                  - {image: images/A.png, click: [1, 2]}
                  - {image: images/missing.png, click: [3, 4]}
                  - {image: images/B.png, click: [5, 6]}
                  - {image: images/C.png, click: [7, 8]}
              broken:
                query: lid
                exemplars: []
            """
        )
    )
    return images


def snapshot(library):
    return {name: (s.query, [e.click for e in s.exemplars]) for name, s in library.sets.items()}


# ---- file names --------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_set_folder_names_are_plain_and_distinct(first, second):
    for name in (first, second):
        folder = set_folder_name(name)
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in folder), folder
        assert folder not in (".", "..") and len(folder) <= 60
    if first != second:
        # also on case-insensitive file systems
        assert set_folder_name(first).lower() != set_folder_name(second).lower()


def test_awkward_names_stay_inside_the_images_folder_and_round_trip(tmp_path, rng):
    path = tmp_path / "taught.yaml"  # does not exist yet: a writable library starts empty
    library = SupportLibrary.load(path, writable=True)
    assert library.names() == [] and not path.exists()
    images = {name: random_image(rng, 30, 40) for name in AWKWARD_NAMES}
    for name, image in images.items():
        library.add_exemplar(name, image, (39, 28.5), query=f"part of {name}")  # ROS pixels: v < 29.5
    assert sorted(os.listdir(tmp_path)) == ["taught.yaml", "taught.yaml.bak", "taught_images"]
    stored = sorted((tmp_path / "taught_images").rglob("*.png"))
    assert len(stored) == len(AWKWARD_NAMES)  # one folder each: no two names share a file
    assert len({p.parent for p in stored}) == len(AWKWARD_NAMES)
    reloaded = SupportLibrary.load(path)
    assert reloaded.errors == [] and reloaded.names() == sorted(AWKWARD_NAMES)
    for name, image in images.items():
        support_set = reloaded.get(name)
        assert support_set.query == f"part of {name}" and support_set.exemplars[0].click == (39.0, 28.5)
        np.testing.assert_array_equal(support_set.exemplars[0].image, image)  # PNG: lossless
        assert (tmp_path / "taught_images") in pathlib.Path(support_set.exemplars[0].source).parents
        assert reloaded.storage(name) == str(path)


@pytest.mark.parametrize("name", ["", "   ", "tab\tname", "new\nline", "x" * 201, 7])
def test_bad_set_names_are_refused(tmp_path, rng, name):
    library = SupportLibrary.load(tmp_path / "l.yaml", writable=True)
    with pytest.raises(SupportError, match="name"):
        library.add_exemplar(name, random_image(rng, 10, 10), (1, 1))
    assert not (tmp_path / "l.yaml").exists()


# ---- persistence and editing -------------------------------------------------------------------
def test_additions_persist_with_a_backup_and_never_overwrite_images(tmp_path, rng):
    make_library(tmp_path, rng)
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    folder = library.images_dir / set_folder_name("mug")
    squatter = folder / "0000.png"  # e.g. left by a killed writer: must survive untouched
    write_png(squatter, random_image(rng, 5, 5))
    squatter_bytes = squatter.read_bytes()
    before = path.read_bytes()
    new_image = random_image(rng, 33, 44)
    updated = library.add_exemplar("mug", new_image, (43, 32))
    assert [e.click for e in updated.exemplars][-1] == (43.0, 32.0) and len(updated.exemplars) == 4
    assert (tmp_path / "library.yaml.bak").read_bytes() == before
    assert squatter.read_bytes() == squatter_bytes
    document = yaml.safe_load(path.read_text())
    assert document["sets"]["broken"] == {"query": "lid", "exemplars": []}  # kept though it did not load
    assert document["sets"]["mug"]["exemplars"][1]["image"] == "images/missing.png"
    assert document["sets"]["mug"]["exemplars"][-1]["image"] == f"library_images/{folder.name}/0001.png"
    reloaded = SupportLibrary.load(path)
    np.testing.assert_array_equal(reloaded.get("mug").exemplars[-1].image, new_image)
    assert len(reloaded.errors) == 2  # the missing image and the empty set, as before


def test_one_frame_clicked_three_times_is_one_image_file_also_after_a_reload_and_across_sets(tmp_path, rng):
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    frame, other = random_image(rng, 30, 40), random_image(rng, 30, 40)
    for click in ((1, 2), (3, 4), (5, 6)):
        library.add_exemplar("mug", frame.copy(), click, query="handle")  # a copy: equal pixels, not the object
    stored = sorted(tmp_path.joinpath("library_images").rglob("*.png"))
    assert len(stored) == 1
    document = yaml.safe_load(path.read_text())
    relative = stored[0].relative_to(tmp_path).as_posix()
    assert [e["image"] for e in document["sets"]["mug"]["exemplars"]] == [relative] * 3
    library.add_exemplar("mug", other, (7, 8))  # another frame: its own file
    assert len(list(tmp_path.joinpath("library_images").rglob("*.png"))) == 2
    # A restarted node finds the stored frame again, also for another set.
    reopened = SupportLibrary.load(path, writable=True)
    reopened.add_exemplar("rim", frame, (9, 10), query="rim")
    assert len(list(tmp_path.joinpath("library_images").rglob("*.png"))) == 2
    reloaded = SupportLibrary.load(path)
    assert reloaded.errors == []
    assert [e.click for e in reloaded.get("mug").exemplars] == [(1, 2), (3, 4), (5, 6), (7, 8)]
    for exemplar in reloaded.get("mug").exemplars[:3] + reloaded.get("rim").exemplars:
        np.testing.assert_array_equal(exemplar.image, frame)
        assert exemplar.source == str(stored[0].resolve())


def test_a_library_with_one_file_per_click_still_loads_and_grows(tmp_path, rng):
    """Written before images were stored once: two identical files for two clicks on one frame."""
    frame = random_image(rng, 20, 30)
    folder = tmp_path / "library_images" / set_folder_name("mug")
    write_png(folder / "0000.png", frame)
    write_png(folder / "0001.png", frame)
    images = f"library_images/{folder.name}"
    (tmp_path / "library.yaml").write_text(
        f"sets:\n  mug:\n    query: handle\n    exemplars:\n"
        f"      - {{image: {images}/0000.png, click: [1, 1]}}\n      - {{image: {images}/0001.png, click: [2, 2]}}\n"
    )
    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    assert library.errors == [] and [e.click for e in library.get("mug").exemplars] == [(1, 1), (2, 2)]
    library.add_exemplar("mug", frame, (3, 3))  # the same frame again: one of the existing files
    library.add_exemplar("mug", random_image(rng, 20, 30), (4, 4))
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    entries = yaml.safe_load((tmp_path / "library.yaml").read_text())["sets"]["mug"]["exemplars"]
    assert entries[2]["image"] in (f"{images}/0000.png", f"{images}/0001.png")
    assert entries[3]["image"] == f"{images}/0002.png"
    assert [e.click for e in SupportLibrary.load(tmp_path / "library.yaml").get("mug").exemplars] == [
        (1, 1), (2, 2), (3, 3), (4, 4)
    ]  # fmt: skip


def test_a_stored_image_deleted_by_hand_is_written_again(tmp_path, rng):
    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    frame = random_image(rng, 20, 30)
    first = pathlib.Path(library.add_exemplar("mug", frame, (1, 1)).exemplars[-1].source)
    first.unlink()
    library.add_exemplar("mug", frame, (2, 2))
    assert first.is_file()  # written again (the freed name is taken again)
    np.testing.assert_array_equal(SupportLibrary.load(tmp_path / "library.yaml").get("mug").exemplars[1].image, frame)


def test_images_are_stored_where_hard_links_are_not_supported(tmp_path, rng, monkeypatch):
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    first = random_image(rng, 20, 30)
    library.add_exemplar("lid", first, (1, 1))

    def no_links(source, target):
        raise PermissionError(errno.EPERM, "hard links not supported", str(target))

    monkeypatch.setattr(os, "link", no_links)
    second = random_image(rng, 21, 31)
    library.add_exemplar("lid", second, (2, 2))
    folder = library.images_dir / set_folder_name("lid")
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png"]  # no temporary left
    stored = SupportLibrary.load(path).get("lid").exemplars
    np.testing.assert_array_equal(stored[0].image, first)
    np.testing.assert_array_equal(stored[1].image, second)


def test_editing_persists_and_keeps_entries_that_did_not_load(tmp_path, rng):
    make_library(tmp_path, rng)
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    assert [e.click for e in library.get("mug").exemplars] == [(1, 2), (5, 6), (7, 8)]
    library.remove_exemplar("mug", 1)  # B; its YAML entry is the third (the missing one is second)
    assert [e.click for e in SupportLibrary.load(path).get("mug").exemplars] == [(1, 2), (7, 8)]
    library.remove_exemplar("mug", 1)  # C, found by its shifted entry
    assert [e.click for e in SupportLibrary.load(path).get("mug").exemplars] == [(1, 2)]
    assert yaml.safe_load(path.read_text())["sets"]["mug"]["exemplars"][1]["image"] == "images/missing.png"
    with pytest.raises(SupportError, match="only one"):
        library.remove_exemplar("mug", 0)
    with pytest.raises(SupportError, match="no exemplar 5"):
        library.remove_exemplar("mug", 5)
    library.set_default_query("mug", "  rim of the mug ")
    assert SupportLibrary.load(path).get("mug").query == "rim of the mug"
    library.remove_support_set("broken")  # in the YAML only (it never loaded)
    assert "broken" not in yaml.safe_load(path.read_text())["sets"]
    library.remove_support_set("mug")
    reloaded = SupportLibrary.load(path)
    assert reloaded.names() == [] and library.names() == []
    with pytest.raises(SupportError, match="unknown support set 'mug'"):
        library.remove_support_set("mug")


def test_read_only_library_refuses_edits_and_keeps_additions_in_memory(tmp_path, rng):
    make_library(tmp_path, rng)
    path = tmp_path / "library.yaml"
    before = path.read_bytes()
    library = SupportLibrary.load(path)
    assert not library.writable and library.storage("mug") == str(path)
    for edit in (
        lambda: library.remove_exemplar("mug", 0),
        lambda: library.remove_support_set("mug"),
        lambda: library.set_default_query("mug", "x"),
    ):
        with pytest.raises(SupportError, match="read-only"):
            edit()
    library.add_exemplar("runtime set", random_image(rng, 10, 10), (1, 1), query="q")
    assert library.storage("runtime set") == "" and "runtime set" in library.names()
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["images", "library.yaml"]


def test_writable_library_refuses_an_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SupportError, match="not writable"):
            SupportLibrary.load(locked / "library.yaml", writable=True)
    finally:
        locked.chmod(0o700)


def test_writable_library_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SupportError, match="folder .* does not exist"):
        SupportLibrary.load(tmp_path / "nope" / "library.yaml", writable=True)


def test_concurrent_teaching_is_serialised(tmp_path, rng):
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    images = [random_image(rng, 20, 20) for _ in range(12)]
    errors = []

    def teach(index):
        try:
            library.add_exemplar("lid" if index % 2 else "rim", images[index], (index, index))
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=teach, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reloaded = SupportLibrary.load(path)
    for name, indices in (("lid", range(1, 12, 2)), ("rim", range(0, 12, 2))):
        clicks = sorted(e.click for e in reloaded.get(name).exemplars)
        assert clicks == [(float(i), float(i)) for i in indices]
        for exemplar in reloaded.get(name).exemplars:
            np.testing.assert_array_equal(exemplar.image, images[int(exemplar.click[0])])


# ---- a writer killed between its steps --------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pop_ros.supports import SupportLibrary
    library = SupportLibrary.load(sys.argv[1], writable=True)
    operation = sys.argv[2]
    image = np.full((30, 40, 3), 77, np.uint8)
    image[5:9, 10:20] = (1, 2, 3)
    if operation == "add new set":
        library.add_exemplar("../über set", image, (12, 7), query="new part")
    elif operation == "add to set":
        library.add_exemplar("mug", image, (12, 7))
    elif operation == "remove exemplar":
        library.remove_exemplar("mug", 1)
    elif operation == "remove set":
        library.remove_support_set("mug")
    elif operation == "set default query":
        library.set_default_query("mug", "rim of the mug")
    """
)
NEW_IMAGE = np.full((30, 40, 3), 77, np.uint8)
NEW_IMAGE[5:9, 10:20] = (1, 2, 3)


def expected_states(old):
    mug_query, mug_clicks = old["mug"]
    return {
        "add new set": {**old, "../über set": ("new part", [(12.0, 7.0)])},
        "add to set": {**old, "mug": (mug_query, mug_clicks + [(12.0, 7.0)])},
        "remove exemplar": {**old, "mug": (mug_query, [mug_clicks[0], mug_clicks[2]])},
        "remove set": {k: v for k, v in old.items() if k != "mug"},
        "set default query": {**old, "mug": ("rim of the mug", mug_clicks)},
    }


OPERATIONS = ["add new set", "add to set", "remove exemplar", "remove set", "set default query"]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.slow
def test_a_writer_killed_after_any_step_leaves_the_old_or_the_new_library(tmp_path, rng, operation):
    template = tmp_path / "template"
    template.mkdir()
    make_library(template, rng)
    old = snapshot(SupportLibrary.load(template / "library.yaml"))
    new = expected_states(old)[operation]
    template_errors = {e.replace(str(template), "") for e in SupportLibrary.load(template / "library.yaml").errors}
    outcomes = []
    for step in range(1, 30):
        work = tmp_path / f"step{step}"
        shutil.copytree(template, work)
        environment = {**os.environ, KILL_AFTER_STEP_ENV: str(step)}
        run = subprocess.run(
            [sys.executable, "-c", WRITER, str(work / "library.yaml"), operation],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        library = SupportLibrary.load(work / "library.yaml")
        state = snapshot(library)
        # No new problem: at most the template's own (a missing image, an empty set).
        assert {e.replace(str(work), "") for e in library.errors} <= template_errors, library.errors
        assert state in (old, new), f"killed after step {step}: {state}"
        if state == new and operation.startswith("add"):
            added = library.get("../über set" if operation == "add new set" else "mug").exemplars[-1]
            np.testing.assert_array_equal(added.image, NEW_IMAGE)
        # The next writer works after a crash, and the library still loads.
        SupportLibrary.load(work / "library.yaml", writable=True).add_exemplar("after", NEW_IMAGE, (1, 1))
        assert "after" in SupportLibrary.load(work / "library.yaml").names()
        if run.returncode == 0:
            outcomes.append("finished")
            assert state == new
            break
        assert run.returncode == -signal.SIGKILL, run.stderr  # the hook fired: step `step` was reached
        outcomes.append("new" if state == new else "old")
    assert outcomes[-1] == "finished", "the writer never finished"
    kills = outcomes[:-1]
    # Every step is a kill point; the YAML switches from old to new once, at its replacement.
    assert len(kills) >= 5 and "old" in kills and kills == sorted(kills, key=("old", "new").index)


# ---- the pipeline's set-feature cache follows edits --------------------------------------------------
def test_set_features_follow_edits_and_retaught_sets(tmp_path, rng):
    from pop_ros.pipeline import PartPointer

    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    pointer = PartPointer.from_preset("tiny", library=library)
    target = random_image(rng, 64, 80)
    first, second, third = (random_image(rng, 48, 64) for _ in range(3))

    def same_as_explicit(supports):
        by_set = pointer.point(target, "lid", support_set="lid")
        explicit = pointer.point(target, "lid", supports=supports)
        np.testing.assert_allclose(by_set.heatmap, explicit.heatmap, atol=1e-6)
        assert by_set.num_shots == len(supports)

    pointer.add_exemplar("lid", first, (10, 10))
    pointer.add_exemplar("lid", second, (30, 20))
    same_as_explicit([(first, (10, 10)), (second, (30, 20))])
    library.remove_exemplar("lid", 0)  # edits go to the library; the pointer follows its versions
    same_as_explicit([(second, (30, 20))])
    library.remove_support_set("lid")
    pointer.add_exemplar("lid", third, (5, 40))  # same name, new content: no stale features
    same_as_explicit([(third, (5, 40))])
    versions = {pointer.library.get("lid").version}
    library.set_default_query("lid", "lid of the jar")
    versions.add(pointer.library.get("lid").version)
    assert len(versions) == 2 and pointer.point(target, support_set="lid").query == "lid of the jar"
    assert pointer.support_features.cached_sets() == [("lid", pointer.library.get("lid").version)]


# ---- the module's promises, one test each ----------------------------------------------------------
def test_every_file_is_fsynced_after_its_last_write_before_it_is_published(tmp_path, rng, monkeypatch):
    """At each rename or link, the file being published was fsynced with all its bytes in the kernel
    (an fsync of only the writer's first half leaves the rest unsynced)."""
    synced_sizes = {}  # path -> file size at its latest fsync
    published = []

    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def recording_fsync(descriptor):
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        synced_sizes[path] = os.fstat(descriptor).st_size
        real_fsync(descriptor)

    def check_synced(source):
        source = os.path.abspath(source)
        size = os.stat(source).st_size
        assert synced_sizes.get(source) == size, (
            f"{source} ({size} bytes) published after an fsync at {synced_sizes.get(source)}"
        )
        published.append(pathlib.Path(source).name)

    def checking_replace(source, target):
        check_synced(source)
        real_replace(source, target)

    def checking_link(source, target):
        check_synced(source)
        real_link(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", checking_replace)
    monkeypatch.setattr(os, "link", checking_link)
    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    library.add_exemplar("mug", random_image(rng, 30, 40), (3, 4), query="handle")  # image + YAML
    library.add_exemplar("mug", random_image(rng, 31, 41), (5, 6))  # image + YAML + backup
    # Two image links, two YAML replacements, one backup replacement: all checked.
    assert sum(".png.tmp-" in name for name in published) == 2
    assert sum(name.startswith(".library.yaml.tmp-") for name in published) == 2
    assert sum(name.startswith(".library.yaml.bak.tmp-") for name in published) == 1


def test_backup_after_two_edits_holds_the_yaml_just_before_the_second(tmp_path, rng):
    path = tmp_path / "library.yaml"
    library = SupportLibrary.load(path, writable=True)
    library.add_exemplar("mug", random_image(rng, 20, 20), (1, 1), query="handle")
    library.add_exemplar("mug", random_image(rng, 20, 20), (2, 2))  # first edit of an existing file
    first_backup = (tmp_path / "library.yaml.bak").read_bytes()
    before_second = path.read_bytes()
    library.set_default_query("mug", "rim")  # second edit
    backup = (tmp_path / "library.yaml.bak").read_bytes()
    assert backup == before_second and backup != first_backup
    assert [e["click"] for e in yaml.safe_load(backup)["sets"]["mug"]["exemplars"]] == [[1, 1], [2, 2]]
    assert yaml.safe_load(backup)["sets"]["mug"]["query"] == "handle"


@pytest.mark.parametrize("first,second", [("Mug", "mug"), ("Bottle", "Böttle")])
def test_names_differing_in_case_or_accents_never_share_a_folder(tmp_path, rng, first, second):
    # Also on a case-insensitive file system: compare the folder names case-folded.
    assert set_folder_name(first).lower() != set_folder_name(second).lower()
    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    images = {first: random_image(rng, 20, 24), second: random_image(rng, 20, 24)}
    for name, image in images.items():
        library.add_exemplar(name, image, (1, 1), query=name)
    folders = {name: library.images_dir / set_folder_name(name) for name in images}
    assert folders[first] != folders[second]
    for folder in folders.values():
        assert sorted(p.name for p in folder.iterdir()) == ["0000.png"]  # its own image only
    reloaded = SupportLibrary.load(tmp_path / "library.yaml")
    for name, image in images.items():
        np.testing.assert_array_equal(reloaded.get(name).exemplars[0].image, image)


def test_every_edit_gives_the_set_a_new_version(tmp_path, rng):
    library = SupportLibrary.load(tmp_path / "library.yaml", writable=True)
    versions = [library.add_exemplar("mug", random_image(rng, 20, 20), (1, 1), query="handle").version]
    versions.append(library.add_exemplar("mug", random_image(rng, 20, 20), (2, 2)).version)
    versions.append(library.add_exemplar("mug", random_image(rng, 20, 20), (3, 3)).version)
    held = library.get("mug")  # a reader holding the set sees it unchanged by later edits
    versions.append(library.remove_exemplar("mug", 0).version)
    versions.append(library.set_default_query("mug", "rim").version)
    assert len(set(versions)) == 5, versions
    assert [e.click for e in held.exemplars] == [(1, 1), (2, 2), (3, 3)] and held.query == "handle"
    assert library.get("mug").version == versions[-1]
    # A memory-only library versions its additions the same way.
    memory = SupportLibrary()
    a = memory.add_exemplar("lid", random_image(rng, 20, 20), (1, 1)).version
    b = memory.add_exemplar("lid", random_image(rng, 20, 20), (2, 2)).version
    assert a != b
