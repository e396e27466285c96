"""The browser UI: the only layer that imports Gradio. One module per tab (`build_<tab>_tab()`).

Handlers convert widget values into core types and back; all real work happens in the core
modules, so everything the UI does can also be done from `python -m studio`.
"""
