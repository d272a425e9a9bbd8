"""The clinic's local page: what the device runs, whether it is drifting, what it decided, and a form
to classify one image, served from the device itself (Starlette, no CDN, works offline).

``cli.py`` is ``edgecxr_runner.py page``; :func:`app.start` serves the same page beside ``serve``,
whose results reach it as a listener (``PageState.listener(record, gray)``).
"""
