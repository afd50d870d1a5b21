"""The sandboxed jinja2 environment of the shipped templates (replies, chat answers, alerts).

Apart from :mod:`socialcrm.responder` so that a command that only renders (``socialcrm
queue``) loads jinja2 and nothing of the database layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def template_environment(extra_dir: Path | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed jinja2 environment for replies and alerts (user templates first)."""
    loaders: list[jinja2.BaseLoader] = []
    if extra_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(extra_dir)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES_DIR)))
    return ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def template_position(err: BaseException) -> str:
    """``file:line`` of the template a jinja2 error happened in, as well as can be told."""
    if isinstance(err, jinja2.TemplateSyntaxError) and err.lineno:
        return f"{err.filename or err.name or '?'}:{err.lineno}"
    # Jinja2 rewrites a rendering error's traceback so that its frames are template lines.
    where = "?"
    tb = err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            where = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def render_chat(env: jinja2.Environment, template: str, **context: Any) -> str:
    """A chat/CLI answer from ``templates/chat/<template>.j2``."""
    return env.get_template(f"chat/{template}.j2").render(**context).strip()
