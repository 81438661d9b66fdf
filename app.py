"""ML Manager dashboard: navigation only, plus the once-per-server import warm-up. Each page lives in pages/;
the widgets they share in ui/."""
import gc
import logging
import threading
from pathlib import Path

import streamlit as st

from ui.runtime import ENTRYPOINT_RAN, configure_logging, keep_page_inputs

# The tab icon is a file shipped here: a material icon as favicon is fetched from a font server on the
# internet, which a dashboard that must work offline cannot rely on.
ICON = str(Path(__file__).with_name("assets") / "icon.png")
st.set_page_config(page_title="ML Manager", page_icon=ICON, layout="wide")
configure_logging()


@st.cache_resource(show_spinner=False)
def warm_up_imports() -> threading.Thread:
    """Import torch and the engine once per server, in the background, while the Overview draws.

    On a cold start the first visit to the Train page otherwise shows a blank page for 5-10 s
    (importing torch); a new user reads the Overview first, and by then the import is done.
    """
    def work() -> None:
        try:
            import engine.inference.predict  # noqa: F401  (imports torch)
            import engine.jobs  # noqa: F401
            import engine.training.loop  # noqa: F401
        except Exception:  # noqa: BLE001 - this thread's last resort: the page that needs the module imports it
            #                   again and shows the error as a sentence
            logging.getLogger("ml_manager.dashboard").exception("warming up the engine imports failed")
        # Streamlit runs a full gc.collect(2) after every script and fragment run, before the browser can
        # fetch the new image; with torch imported that pass walks every object torch made and slows each
        # tuner slider move (docs/BENCHMARKS.md, "Slider latency"). The imported modules live as long as the server,
        # so move them out of the collector's reach once: later collections only walk new objects.
        gc.collect()
        gc.freeze()

    thread = threading.Thread(target=work, name="warm-up-imports", daemon=True)
    thread.start()
    return thread


overview = st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True)
pg = st.navigation(
    [
        overview,
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/models.py", title="Models", icon=":material/table_view:"),
        st.Page("pages/model_inference.py", title="Model inference", icon=":material/search_insights:", url_path="model_inference"),
        st.Page("pages/inference.py", title="Inference", icon=":material/image_search:"),
        st.Page("pages/postprocess.py", title="Post-processing", icon=":material/tune:", url_path="postprocess"),
    ]
)
st.session_state[ENTRYPOINT_RAN] = True  # the pages know they run under this navigation (ui.runtime)
keep_page_inputs()  # a page's inputs survive a visit to another page
warm_up = warm_up_imports()
if pg.url_path != overview.url_path:
    # Other pages import the engine themselves; two threads importing the same modules at once
    # can deadlock on import locks, so they wait for the warm-up (instant once it has finished).
    with st.spinner("Loading the engine (first visit after start-up)…", show_time=True):
        warm_up.join()
pg.run()
