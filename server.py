"""What `make run` serves: the dashboard (app.py and its pages) and the HTTP API (engine/api.py, under
/api/v1/) on one host and port.

    streamlit run server.py --server.address 127.0.0.1 --server.port 8501

`streamlit run` finds the ``st.App`` below and serves it; app.py stays the dashboard's navigation page
(``streamlit run app.py`` still serves the dashboard alone, without the API).
"""
import streamlit as st

from engine.api import PREFIX, api_routes, api_token, served_urls, token_path

# Streamlit's own line names browser.serverAddress (127.0.0.1 in .streamlit/config.toml) even where the server
# listens on every address (make run HOST=0.0.0.0); these are the addresses it answers on
urls = served_urls(st.get_option("server.address") or "", st.get_option("server.port"))
print(f"  Dashboard and HTTP API on {', '.join(urls)}", flush=True)
token = api_token()  # made on the first start; the API refuses every request without it
print(f"  HTTP API: {PREFIX}/ on the dashboard's address, with the header 'Authorization: Bearer {token}'"
      f" (the token is kept in {token_path()})", flush=True)

app = st.App("app.py", routes=api_routes(token))
