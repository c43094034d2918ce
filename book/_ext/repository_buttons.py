"""Sphinx extension of the course site: no button points at a repository that does not exist.

The course's repository url is one setting, ``repository.url`` in ``_config.yml``; Jupyter Book
derives the repository button and the Colab / Binder launch buttons of every lab page from it.
Until a course's maintainer sets it, it holds :data:`PLACEHOLDER`, and buttons derived from it
would lead readers to a 404. While it is the placeholder this extension hides the repository
and launch buttons (the .ipynb download button stays: it serves the page's own file) and sets
the page substitutions ``{{ repo_ref }}`` (where the repository is) and ``{{ launch_note }}`` (the
launch buttons) to say so; once it is a real url, the buttons appear and the two name it.
book/instructors.md tells a course's maintainer what to set.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

PLACEHOLDER = "https://github.com/labkit-course/seeing-inside"


def is_placeholder(url: object) -> bool:
    """Whether ``url`` is unset or the placeholder (trailing slashes and ``.git`` ignored)."""
    if not isinstance(url, str) or not url.strip():
        return True
    clean = url.strip().rstrip("/")
    clean = clean[:-4] if clean.endswith(".git") else clean
    return clean.lower() == PLACEHOLDER


def button_options(theme_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The theme options with the repository-derived buttons hidden when the url is the
    placeholder (a new dict; the argument is not changed), and the page substitutions."""
    options = dict(theme_options)
    url = options.get("repository_url")
    if not is_placeholder(url):
        return options, {"repo_ref": str(url),
                         "launch_note": "Each lab page on this site has a launch button (the rocket icon at the "
                                        "top) that opens the notebook in Colab or Binder."}
    options["use_repository_button"] = False
    options["use_issues_button"] = False
    options["use_edit_page_button"] = False
    options["use_source_button"] = False
    # sphinx-book-theme draws a launch button for each service whose url is set
    options["launch_buttons"] = {k: v for k, v in dict(options.get("launch_buttons") or {}).items()
                                 if k not in ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url",
                                              "thebe")}
    return options, {"repo_ref": "the address your instructor gives you",
                     "launch_note": "This copy of the site was built before the course's repository address was "
                                    "set, so its lab pages have no Colab or Binder launch buttons: download a lab "
                                    "(the download icon at the top of its page) and upload it to Colab."}


def _on_config_inited(app: Sphinx, config: Config) -> None:
    options, notes = button_options(dict(config.html_theme_options or {}))
    config.html_theme_options = options
    config.myst_substitutions = {**dict(getattr(config, "myst_substitutions", None) or {}), **notes}
    if is_placeholder(options.get("repository_url")):
        logging.getLogger(__name__).info(
            "repository.url in _config.yml is the placeholder: repository and launch buttons hidden")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", _on_config_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
