"""What `make run` serves: the dashboard (app.py and its pages) and the HTTP API (engine/api.py, under
/api/v1/) on one host and port.

    streamlit run server.py --server.address 127.0.0.1 --server.port 8501

`streamlit run` finds the ``st.App`` below and serves it; app.py stays the dashboard's navigation page
(``streamlit run app.py`` still serves the dashboard alone, without the API).
"""
import streamlit as st

from engine.api import PREFIX, api_routes, api_token, token_path

token = api_token()  # made on the first start; the API refuses every request without it
print(f"  HTTP API: {PREFIX}/ on the dashboard's address, with the header 'Authorization: Bearer {token}'"
      f" (the token is kept in {token_path()})", flush=True)

app = st.App("app.py", routes=api_routes(token))
