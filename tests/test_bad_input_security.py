"""Security settings and the names uploads are stored under: Streamlit keeps XSRF protection and binds
to 127.0.0.1, every ``torch.load`` passes ``weights_only=True``, uploaded zips land under generated names."""
from __future__ import annotations

import re
import tomllib

import pytest
from streamlit.testing.v1 import AppTest

from storage import archives
from tests.bad_input_helpers import APP_TIMEOUT, FUNDUS, ROOT, pair, zip_bytes

pytestmark = pytest.mark.timeout(120)


def test_streamlit_keeps_xsrf_protection_and_binds_to_localhost():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["address"] == "127.0.0.1"


def test_checkpoints_load_with_weights_only_everywhere():
    """Every torch.load in the program passes weights_only=True."""
    calls = []
    for path in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("storage/*.py"), *ROOT.glob("pages/*.py"), ROOT / "app.py"]):
        for line in path.read_text().splitlines():
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                calls.append((path.name, line.strip()))
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_uploaded_zips_are_stored_under_generated_names(ctx):
    """The batch-inference zip goes to uploads/<uuid>/<its own name, made safe>; the data set zip to
    datasets/<safe name>-<hash>/."""
    at = AppTest.from_file(str(ROOT / "pages" / "inference.py"), default_timeout=APP_TIMEOUT).run()
    at.radio(key="inf_batch_kind").set_value("Zip upload").run()
    at.file_uploader(key="inf_batch_zip").set_value(("../../evil name;rm.zip", zip_bytes({"a.png": FUNDUS}),
                                                     "application/zip")).run()
    at.button(key="inf_batch_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    stored = [p.relative_to(ctx.home / "uploads").parts for p in (ctx.home / "uploads").rglob("*") if p.is_file()]
    assert len(stored) == 1 and re.fullmatch(r"[0-9a-f]{32}", stored[0][0]) and stored[0][1] == "evil name_rm.zip", stored
    folder = archives.unpack_dataset_zip(zip_bytes({f"d/{k}": v for k, v in pair("a.png").items()}), "../../x y;.zip")
    assert folder.parent == ctx.home / "datasets" and re.fullmatch(r"x_y-[0-9a-f]{8}", folder.name), folder
