"""How every loopformer command speaks: ``key=value`` options read into one typed schema per
tool, ``--help`` written from that schema, and one printer for a refused command.

``train.py`` and ``sweep.py`` take Hydra's overrides (their schemas are the composed configs:
:class:`~loopformer.config.Settings`, the sweep's); the ``python -m loopformer.*`` tools take
``option=value`` arguments with the same value syntax (YAML: ``n_prompts=640``,
``parts=[dynamics,match]``, ``device=null``). A schema is a dataclass whose fields carry their
help in ``metadata["help"]`` (:func:`option`). A refused command prints one line,
``error: ...`` naming the option, and exits 2; any other exception is a bug and shows its
traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from loopformer.errors import ConfigError, typed

T = TypeVar("T")
REFUSED = 2  # the exit status of a refused command


def option(default: Any = dataclasses.MISSING, help: str = "", positional: bool = False):
    """A schema field with its ``--help`` line. ``positional``: bare arguments (no ``=``) fill
    the positional fields in order; one whose default is a list takes all that remain."""
    extra = {} if default is dataclasses.MISSING else (
        {"default_factory": lambda: list(default)} if isinstance(default, list)
        else {"default": default})
    return dataclasses.field(metadata={"help": help, "positional": positional}, **extra)


def refuse(e: ConfigError) -> int:
    """The one printer for a refused command: one line on stderr; returns the exit status."""
    sys.stderr.write("error: " + " ".join(str(e).split()) + "\n")
    return REFUSED


_HYDRA = OverridesParser.create()


def _value(key: str, text: str, command: str) -> Any:
    """``text`` read as train.py's command line reads a value (Hydra's grammar:
    ``{factor:2,n_prompts:32}`` is a dict, which YAML reads as keys ``factor:2``); where that
    grammar does not take it (an ``=`` inside, ``run=.../seed=1``, ``ckpt=step=500``; a
    comma list, ``a,b``), as YAML."""
    try:
        (parsed,) = _HYDRA.parse_overrides([f"v={text}"])
        if not parsed.is_sweep_override():
            return parsed.value()
    except HydraException:
        pass
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{command}: {key}={text} cannot be read: "
                          f"{str(e.msg).strip().splitlines()[0]}") from e


def _positionals(schema: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(schema) if f.metadata.get("positional")]


def _takes_rest(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), list)


def read_args(schema: type, argv: Sequence[str], command: str) -> dict[str, Any]:
    """``argv`` as ``{option: value}`` (values read as YAML), each option a field of
    ``schema``; bare arguments fill its positional fields in order."""
    names = [f.name for f in dataclasses.fields(schema)]
    slots = _positionals(schema)
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep and slots:
            if _takes_rest(slots[0]):
                out.setdefault(slots[0].name, []).append(arg)
            else:
                out[slots.pop(0).name] = arg
        elif not sep or not key:
            raise ConfigError(f"{command}: {arg!r} is not of the form option=value; options: "
                              f"{', '.join(names)}")
        elif key not in names:
            raise ConfigError(f"{command}: unknown option {key}; allowed: {', '.join(names)}")
        else:
            out[key] = _value(key, text, command)
    return out


def parse(schema: type[T], argv: Sequence[str], command: str) -> T:
    """``argv`` read into ``schema``: types converted and checked, its ``__post_init__`` run;
    a bad option is a ConfigError naming it."""
    args = read_args(schema, argv, command)
    for f in dataclasses.fields(schema):
        if _default(f) == "required" and f.name not in args:
            form = f.name.upper() if f.metadata.get("positional") else f"{f.name}=..."
            raise ConfigError(f"{command}: give {form} ({f.metadata.get('help', '')})")
    return typed(schema, args)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return "default: " + ("null" if value is None else OmegaConf.to_yaml({"v": value})
                          .removeprefix("v:").strip().replace("\n", " "))


def help_text(schema: type, command: str, summary: str) -> str:
    """``--help``: the command, its summary, and one line per option with its default."""
    bare = " ".join(f"{f.name.upper()}{' ...' if _takes_rest(f) else ''}"
                    for f in _positionals(schema))
    usage = f"usage: {command}" + (f" {bare}" if bare else "") + " [option=value ...]"
    lines = [usage, "", summary.strip(), "", "options:"]
    for f in dataclasses.fields(schema):
        lines.append(f"  {f.name:<16} {f.metadata.get('help', '')} ({_default(f)})")
    return "\n".join(lines)


def run(schema: type[T], work: Callable[[T], Any], argv: Sequence[str] | None, command: str,
        summary: str) -> int:
    """A tool's ``main``: ``--help``, or the options parsed and ``work`` run on them. Returns
    the exit status: ``work``'s if it returns an int, else 0; 2 with one line when the command
    is refused (a :class:`ConfigError` anywhere in it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        sys.stdout.write(help_text(schema, command, summary) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        status = work(parse(schema, argv, command))
    except ConfigError as e:
        return refuse(e)
    return status if isinstance(status, int) else 0


def run_commands(commands: dict[str, tuple[type, Callable[[Any], Any], str]],
                 argv: Sequence[str] | None, command: str, summary: str) -> int:
    """A tool with subcommands: ``command SUB [option=value ...]``, each with its schema."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(commands)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(f"usage: {command} {{{names}}} [option=value ...]\n\n{summary.strip()}\n\n"
                         + "\n".join(f"  {k:<14} {v[2]}" for k, v in commands.items())
                         + f"\n\n{command} SUB --help lists SUB's options\n")
        return 0 if argv else REFUSED
    if argv[0] not in commands:
        return refuse(ConfigError(f"{command}: unknown command {argv[0]!r}; choose one of "
                                  f"{names}"))
    schema, work, doc = commands[argv[0]]
    return run(schema, work, argv[1:], f"{command} {argv[0]}", doc)


# ----------------------------------------------------------------------------- Hydra commands


def check_group_choices(argv: Sequence[str], config_dir: Path, config_name: str) -> None:
    """Refuse, as one line, an override that picks an option a config group does not have
    (``task=nonexistent``) or that Hydra's grammar cannot read, before Hydra composes."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return  # Hydra's own flags (--cfg job, --help, -cn NAME, ...): Hydra reads the line
    args = [a for a in argv if a not in ("-m", "--multirun")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"an override cannot be read: {first}") from e
    search_path = create_config_search_path(str(config_dir.resolve()))
    for o in overrides:  # hydra.searchpath=[...] on the command line adds config sources
        if o.key_or_group == "hydra.searchpath" and isinstance(o.value(), list):
            for source in o.value():
                search_path.append("command-line", str(source))
    loader = ConfigLoaderImpl(config_search_path=search_path)
    for o in overrides:
        group = o.key_or_group
        if o.is_delete() or o.package or not loader.repository.group_exists(group):
            continue
        allowed = loader.get_group_options(group)
        for choice in (o.sweep_string_iterator() if o.is_sweep_override()
                       else [o.get_value_element_as_str()]):
            if choice not in allowed and choice != "null":
                raise ConfigError(f"{group}={choice} is not an option of the {group} group; "
                                  f"choose one of {', '.join(allowed)}")


def hydra_command(main: Callable[[], Any], config_dir: Path, config_name: str) -> None:
    """Run a ``@hydra.main`` entry point after :func:`check_group_choices`."""
    try:
        check_group_choices(sys.argv[1:], config_dir, config_name)
    except ConfigError as e:
        sys.exit(refuse(e))
    main()
