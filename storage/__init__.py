"""Persistence for ML Manager: the data home's file layout and the SQLite run registry.

No Streamlit and no torch in this package.
"""
