"""The documentation cannot drift silently: every relative link and anchor in README.md and docs/*.md
resolves, and docs/interfaces.md names every field of every service, action and message in its section."""

from __future__ import annotations

import pathlib
import re

import pytest

from pop_ros.paths import SOURCE_ROOT

PAGES = [SOURCE_ROOT / "README.md", *sorted((SOURCE_ROOT / "docs").glob("*.md"))]
INTERFACE_FILES = SOURCE_ROOT / "pop_ros_interfaces"
INTERFACES = [path for kind in ("srv", "action", "msg") for path in sorted(INTERFACE_FILES.glob(f"*/*.{kind}"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markdown links reduced to their text, lower case, every
    character but letters, digits, spaces, '-' and '_' dropped, spaces made '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: pathlib.Path) -> list[str]:
    return [target for line in prose_lines(page.read_text()) for target in LINK.findall(INLINE_CODE.sub("", line))]


def test_github_slug_matches_known_anchors():
    # Literal anchors as GitHub renders these headings.
    assert github_slug("4. Running pop_node itself on a recording") == "4-running-pop_node-itself-on-a-recording"
    assert github_slug("`pop-point`: one image file, no ROS") == "pop-point-one-image-file-no-ros"
    assert github_slug("Not here: Ovis2.5 and Kimi-VL") == "not-here-ovis25-and-kimi-vl"


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [bad](#nope) `[code](#x)`\n```\n[fenced](#y)\n```\n[file](other.md#z)\n")
    assert links(page) == ["#title", "#nope", "other.md#z"]
    assert anchors(page) == {"title"}


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(SOURCE_ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    problems = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    assert problems == []


def fields(interface: pathlib.Path) -> list[str]:
    """Field names of a .srv, .action or .msg file (every part alike: request, response, goal, result, feedback)."""
    names = []
    for line in interface.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and line != "---":
            field_type, name = line.split()[:2]
            names.append(name.split("=")[0])
    return names


def section_title(interface: pathlib.Path) -> str:
    """An action's section is "PointToPart (action)"; a service's or message's, its name."""
    return f"{interface.stem} (action)" if interface.suffix == ".action" else interface.stem


def section(text: str, title: str) -> str:
    """The text under the heading `### title`, up to the next heading of level 3 or higher."""
    match = re.search(rf"^### {re.escape(title)}\s*$(.*?)(?=^#{{1,3}} |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/interfaces.md has no section '### {title}'"
    return match.group(1)


def test_fields_are_parsed_from_the_interface_files():
    by_name = {path.name: fields(path) for path in INTERFACES}
    assert by_name["RemoveSupportSet.srv"] == ["support_set", "success", "message"]
    assert by_name["PointToPart.action"][-3:] == ["stage", "queue_position", "elapsed_ms"]
    assert by_name["PointToParts.action"][:2] == ["queries", "support_sets"]
    assert len(by_name) == 11


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda path: path.name)
def test_interfaces_page_names_every_field(interface):
    title = section_title(interface)
    text = section((SOURCE_ROOT / "docs" / "interfaces.md").read_text(), title)
    missing = [name for name in fields(interface) if f"`{name}`" not in text]
    assert missing == [], f"docs/interfaces.md, section {title}, does not name {missing}"


def test_readme_stays_a_short_user_readme():
    assert len((SOURCE_ROOT / "README.md").read_text().splitlines()) <= 360
