"""The browser clients of test_browser.py: pages, the node driver and its Python side (support.py)."""
