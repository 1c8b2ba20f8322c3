"""The licence a company reads first: LICENSE is the Apache-2.0 text that package.xml and setup.py
name, and docs/model-licences.md covers every model preset (its hub ids and whether it is gated)."""

import re
import xml.etree.ElementTree as ElementTree

from pop_ros.models.presets import PRESETS
from pop_ros.paths import SOURCE_ROOT


def test_license_file_is_the_apache_2_0_text_that_the_package_metadata_names():
    text = (SOURCE_ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert len(re.findall(r"^\s+\d+\. [A-Z]", text, re.MULTILINE)) == 9  # the nine numbered sections
    assert ElementTree.parse(SOURCE_ROOT / "package.xml").getroot().findtext("license") == "Apache-2.0"
    assert 'license="Apache-2.0"' in (SOURCE_ROOT / "setup.py").read_text()


def test_model_licence_page_names_every_preset_and_its_models():
    page = (SOURCE_ROOT / "docs" / "model-licences.md").read_text()
    for name, config in PRESETS.items():
        assert f"`{name}`" in page, name
        if not config.random_weights:
            row = next(line for line in page.splitlines() if line.startswith(f"| `{name}`"))
            assert config.mllm in row and config.visual in row, row
            assert ("yes: DINOv3" in row) == ("dinov3" in config.visual), row  # gated exactly when DINOv3
    assert "gated" in page.lower() and "Qwen Research License" in page
