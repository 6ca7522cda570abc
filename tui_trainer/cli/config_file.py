"""``--config FILE.toml``: the file read and checked, key by key, against the config dataclasses;
a typo gets a suggestion, a key in the wrong table gets its right one."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from tui_trainer.config import RunConfig, checked_value
from tui_trainer.errors import UserError


def _starts_with_bom(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist", "check the path given to --config") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start})",
                        "save it as UTF-8: TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        bom = " (it starts with a byte-order mark)" if _starts_with_bom(path) else ""
        raise UserError(f"config file {path} is not valid TOML ({exc}){bom}", "fix the syntax") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read: {exc.strerror or exc}",
                        "check the path given to --config") from None
    sections = {f.name: f for f in fields(RunConfig) if f.name != "run_dir"}
    # The model's vocab_size comes from the data (or its tokenizer), never from a file; [data] has
    # its own vocab_size (the BPE vocabulary to learn), the home of that name.
    home = {f.name: name for name, section in sections.items() for f in fields(section.default_factory)
            if (name, f.name) != ("model", "vocab_size")}
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
        known = {f.name for f in fields(section_cls)} - ({"vocab_size"} if section == "model" else set())
        for key in table:
            if key == "vocab_size" and section == "model":
                raise UserError(f"vocab_size in [model] of {path} cannot be set",
                                "remove it: it comes from the data's tokenizer (for BPE, set vocab_size under [data])")
            if key not in known and key in home:
                raise UserError(f"'{key}' in [{section}] of {path} belongs in another table", f"move it to [{home[key]}]")
            if key not in known:
                guess = difflib.get_close_matches(key, known, n=1)
                raise UserError(f"unknown key '{key}' in [{section}] of {path}",
                                f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(sorted(known))}")
            table[key] = checked_value(section_cls, key, table[key], f"[{section}] of {path}")
    if isinstance(data.get("data"), dict) and data["data"].get("path"):  # ("" stays empty: refused as such)
        data["data"]["path"] = data_path_from_file(data["data"]["path"], path)
    return data


def data_path_from_file(written: str, config_path: str) -> str:
    """A ``[data] path`` is relative to the config file (as in every config file a project keeps
    next to its data), not to wherever the command runs."""
    candidate = Path(written).expanduser()
    return str(candidate if candidate.is_absolute() else Path(config_path).resolve().parent / candidate)


def require_data_file(resolved: str, config_path: str) -> None:
    """A missing file named with the config file that asked for it (no --data flag was given)."""
    target = Path(resolved)
    # (An empty path, a folder or an unreadable file are the path checks' to judge, naming the file too.)
    if resolved and not target.exists():
        raise UserError(f"the data file {target} ([data] path in {config_path}) does not exist",
                        f"paths in a config file are relative to it: fix the path in {config_path}, "
                        "or pass --data, which overrides it")
