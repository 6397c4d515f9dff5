"""The app's tabs, one module each: its handler(s), plain functions of the UI values (tests call
them directly), and ``build(...)``, which lays out the tab's components inside the page's
:class:`gradio.Tab` and wires its events (:func:`apps.earthgen_app.create_demo` calls it).

Tabs import :mod:`apps.common` only, never the page or one another.
"""
