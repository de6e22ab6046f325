"""``rail send``, ``tail``, ``topics``, ``groups`` and ``run`` (Kafka's console tools), with
``rail completion`` and ``rail --version``.  Each command lives in its own module."""

from __future__ import annotations

import argparse
import importlib.metadata
import shlex
from pathlib import Path

from brokerd import protocol as p
from runtime.cli.common import UsageError, guarded, set_handler, with_broker
from runtime.cli.groups import add_groups
from runtime.cli.send import add_send
from runtime.cli.tail import add_tail
from runtime.cli.topics import add_topics


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add send, tail, topics, groups, run and completion to the ``rail`` parser."""
    for add in (add_send, add_tail, add_topics, add_groups, _add_run, _add_completion):
        add(subparsers)


def version_text() -> str:
    """``rail 0.1.0 (protocol 3)``: the installed package and the wire protocol it speaks."""
    try:
        version = importlib.metadata.version("rail")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"rail {version} (protocol {p.PROTOCOL_VERSION})"


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """``rail --version``."""
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version of rail and of its protocol, and exit")


# -- run ------------------------------------------------------------------------------
def _add_run(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("run", help="run a worker script in the foreground",
                                    description="Run SCRIPT's handle(event, ctx) on TOPICS "
                                    "as one member of a group, until Ctrl-C."))
    ap.add_argument("script", help="a .py file defining handle(event, ctx)")
    ap.add_argument("--topics", required=True, help="comma-separated topics to read")
    ap.add_argument("--group", help="consumer group (default: the script's name)")
    ap.add_argument("--retries", type=int, default=3,
                    help="attempts per event before it goes to TOPIC.dlq (default 3)")
    ap.add_argument("--start", choices=("earliest", "latest"), default="earliest",
                    help="where a new group starts (default earliest)")
    set_handler(ap, cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from runtime.worker import main as worker_main
    group = args.group or Path(args.script).stem
    return worker_main([args.script, "--broker", args.broker, "--group", group,
                        "--topics", args.topics, "--name", group,
                        "--retries", str(args.retries), "--start", args.start])


# -- completion -----------------------------------------------------------------------
def _add_completion(sub: argparse._SubParsersAction) -> None:
    ap = sub.add_parser("completion", help="print a shell completion script",
                        description="Print a completion script: source <(rail completion "
                        "bash), or save it in ~/.local/share/bash-completion/completions/rail")
    ap.add_argument("shell", choices=("bash",), help="the shell (bash)")
    set_handler(ap, guarded(cmd_completion, "completion"))


def cmd_completion(args: argparse.Namespace) -> int:
    from runtime.cli import build_parser  # the whole parser, built after this module
    if args.shell != "bash":
        raise UsageError(f"no completion for {args.shell}: bash only")
    print(bash_completion(build_parser()), end="")
    return 0


_BASH = r"""# bash completion for rail: source <(rail completion bash)
declare -gA _rail_words=(
%s)
declare -gA _rail_takes=(
%s)
_rail() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path=rail w i
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == -* ]]; then
            [[ -n ${_rail_takes["$path $w"]+x} ]] && ((i++))
        elif [[ -n ${_rail_words["$path $w"]+x} ]]; then
            path="$path $w"
        fi
    done
    if [[ $prev == -* && -n ${_rail_takes["$path $prev"]+x} ]]; then
        if [[ -n ${_rail_takes["$path $prev"]} ]]; then
            COMPREPLY=($(compgen -W "${_rail_takes["$path $prev"]}" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return 0
    fi
    local words=""
    for w in ${_rail_words[$path]}; do  # options only once a - is typed
        [[ $cur == -* || $w != -* ]] && words+="$w "
    done
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _rail rail
"""


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A static bash completion script for ``parser``: its commands, options and choices."""
    words: dict[str, list[str]] = {}
    takes: dict[str, list[str]] = {}  # "path option" -> its choices ([] = any value)

    def walk(ap: argparse.ArgumentParser, path: str) -> None:
        here = words.setdefault(path, [])
        for action in ap._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    here.append(name)
                    walk(child, f"{path} {name}")
            elif action.option_strings:
                here.extend(action.option_strings)
                if action.nargs != 0:
                    for option in action.option_strings:
                        takes[f"{path} {option}"] = [str(c) for c in action.choices or ()]
            elif action.choices:
                here.extend(str(c) for c in action.choices)

    walk(parser, "rail")
    return _BASH % (_bash_table(words), _bash_table(takes))


def _bash_table(table: dict[str, list[str]]) -> str:
    return "".join(f"    [{shlex.quote(k)}]={shlex.quote(' '.join(v))}\n"
                   for k, v in table.items())
