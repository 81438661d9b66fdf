"""ML Manager dashboard: navigation only. Each page lives in pages/; shared widgets in pages/components.py."""
import streamlit as st

from pages.components import configure_logging

st.set_page_config(page_title="ML Manager", page_icon=":material/visibility:", layout="wide")
configure_logging()

pg = st.navigation(
    [
        st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/models.py", title="Models", icon=":material/table_view:"),
        st.Page("pages/model_inference.py", title="Model inference", icon=":material/search_insights:", url_path="model_inference"),
        st.Page("pages/inference.py", title="Inference", icon=":material/image_search:"),
        st.Page("pages/postprocess.py", title="Post-processing", icon=":material/tune:", url_path="postprocess"),
    ]
)
pg.run()
