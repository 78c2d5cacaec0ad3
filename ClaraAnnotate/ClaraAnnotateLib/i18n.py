"""Slicer's translation function where the application provides it (``slicer.i18n``, Qt); the text as
it is elsewhere (slicer-core without Qt: the web app, tests)."""

try:
    from slicer.i18n import tr
except ImportError:  # no Qt: no translations

    def tr(text: str) -> str:
        return text
