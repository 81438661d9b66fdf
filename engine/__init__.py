"""ML Manager's compute engine, in packages by concern: postprocess, training, inference, jobs, cli,
beside the shared modules they build on (errors, imageio, arrays, fov, tiling, metrics, vesselness).

No Streamlit imports anywhere in this package (tests/test_layout.py enforces it); docs/ARCHITECTURE.md
describes each package and what it may import.
"""
