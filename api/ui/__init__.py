"""The live page's static files (`GET /ui`): one HTML page, its script and its style sheet.

Plain files shipped as package data, with no build step: the script signs in with an API key
the user types, keeps it in sessionStorage, and polls the JSON API with it; it writes what the
API answers into the page as text only (never as HTML), and the page's Content-Security-Policy
allows no script, style or connection but these files and this origin.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
