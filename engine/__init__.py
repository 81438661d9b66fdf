"""ML Manager's compute engine: post-processing, metrics, data, models, training, inference, jobs.

No Streamlit imports anywhere in this package (a test enforces it).
"""
