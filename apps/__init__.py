"""Gradio applications (``earthgen app``)."""
