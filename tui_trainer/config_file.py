"""``--config FILE.toml``: the file read and checked, key by key, against the config dataclasses;
a typo gets a suggestion, a key in the wrong table gets its right one."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import fields
from typing import Any

from .config import RunConfig, checked_value
from .errors import UserError


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist", "check the path given to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc})", "fix the syntax") from None
    sections = {f.name: f for f in fields(RunConfig) if f.name != "run_dir"}
    # vocab_size comes from the data, never from a file.
    home = {f.name: name for name, section in sections.items() for f in fields(section.default_factory)
            if f.name != "vocab_size"}
    for section, table in data.items():
        if not isinstance(table, dict) and section in home:
            raise UserError(f"{section} in {path} is outside any table", f"put it under [{home[section]}]")
        if not isinstance(table, dict) and section in sections:
            raise UserError(f"{section} in {path} must be a table", f"write [{section}] with its settings below it")
        if not isinstance(table, dict):
            guess = difflib.get_close_matches(section, home, n=1)
            raise UserError(f"unknown setting '{section}' outside any table in {path}",
                            f"did you mean '{guess[0]}' under [{home[guess[0]]}]?" if guess
                            else f"settings go in the tables {', '.join(f'[{s}]' for s in sections)}")
        if section not in sections:
            guess = difflib.get_close_matches(section, sections, n=1)
            raise UserError(f"unknown table [{section}] in {path}",
                            f"did you mean [{guess[0]}]?" if guess else f"use one of {', '.join(sections)}")
        section_cls = sections[section].default_factory
        known = {f.name for f in fields(section_cls)} - {"vocab_size"}
        for key in table:
            if key == "vocab_size":
                raise UserError(f"vocab_size in {path} cannot be set", "remove it: it comes from the data's characters")
            if key not in known and key in home:
                raise UserError(f"'{key}' in [{section}] of {path} belongs in another table", f"move it to [{home[key]}]")
            if key not in known:
                guess = difflib.get_close_matches(key, known, n=1)
                raise UserError(f"unknown key '{key}' in [{section}] of {path}",
                                f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(sorted(known))}")
            table[key] = checked_value(section_cls, key, table[key], f"[{section}] of {path}")
    return data
