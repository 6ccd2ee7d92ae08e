"""The ``agentmesh`` command's arguments: every subcommand and its flags (what ``--help``
shows); :mod:`agentmesh.cli` runs them."""

from __future__ import annotations

import argparse
from typing import Any

from .cli_nats import add_nats_dev_parser
from .cli_nats_auth import add_nats_auth_parser

__all__ = ["CONNECT_TIMEOUT", "build_parser"]

#: Seconds to connect to a hub when no --timeout says otherwise.
CONNECT_TIMEOUT = 10.0

_EPILOG = """\
examples:
  agentmesh demo
  agentmesh hub --port 7700 --store ./hub.sqlite3
  agentmesh keygen --path alice.key --id alice
  agentmesh fingerprint --path alice.key
  agentmesh rotate-key --key alice.key --hub 127.0.0.1:7700
  agentmesh listen --hub 127.0.0.1:7700 --key bob.key
  agentmesh send --hub 127.0.0.1:7700 --key alice.key --to bob --text "hello"
  agentmesh request --hub 127.0.0.1:7700 --key alice.key --to bob --text "hello"
  agentmesh chat --hub 127.0.0.1:7700 --key alice.key --to bob
  agentmesh peers --hub 127.0.0.1:7700 --online
  agentmesh hub-stats --url http://127.0.0.1:9464/metrics
  agentmesh nats-dev --nodes 3
  agentmesh nats-auth --servers nats://10.0.0.1:4222 --keys /etc/agentmesh/nats-auth

exit codes: 0 ok, 1 runtime failure, 2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentmesh",
        description="End-to-end encrypted messaging for AI agents.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    # the same two flags after the command too (``agentmesh send ... -q``)
    logging_flags = argparse.ArgumentParser(add_help=False)
    logging_flags.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging"
    )
    logging_flags.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[logging_flags], **kwargs)

    sub.add_parser(
        "hub",
        help="run a network hub (same flags as agentmesh-hub; see 'agentmesh hub --help')",
        add_help=False,
        description="Run the network hub; every flag is passed on to agentmesh-hub.",
    )

    p = add_command(
        "keygen",
        help="create a new identity file and print its fingerprint",
        description="Create a new identity key file (mode 0600) and print its fingerprint. "
        "Refuses to overwrite an existing file.",
    )
    p.add_argument("--path", required=True, help="where to write the key file")
    p.add_argument(
        "--id", dest="agent_id", help="agent id (default: the file name without extension)"
    )
    _passphrase_arg(p)

    p = add_command(
        "fingerprint",
        help="print the fingerprint of an identity file",
        description="Print the fingerprint of an identity key file (compare it out of band).",
    )
    p.add_argument("--path", required=True, help="the key file")
    p.add_argument("--json", action="store_true", help="print agent id and fingerprint as JSON")
    _passphrase_arg(p)

    p = add_command(
        "rotate-key",
        help="move an identity to a new key that its old key signs over",
        description="Replace the identity key in --key by a new one, with a succession "
        "statement signed by the old key and the new one: peers that pinned the old key "
        "follow without the identity-changed error, and the hub re-binds the id. With --hub "
        "the new key is registered at once; without it, at the identity's next connection. "
        "Prints the old and the new fingerprint. Run it while no agent uses the key file.",
    )
    _key_args(p)
    p.add_argument("--hub", metavar="HOST:PORT", help="network hub to register the new key on")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system trust store)")
    p.add_argument(
        "--cafile", metavar="PEM", help="connect with TLS, trusting this CA / certificate"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the hub (default 30)"
    )
    p.add_argument("--json", action="store_true", help="print the fingerprints as JSON")

    p = add_command(
        "send",
        help="send one encrypted message through a network hub",
        description="Send one end-to-end encrypted message through a network hub, then wait "
        "until the hub has durably accepted it. Prints the message id.",
    )
    _message_args(p, "message text", "seconds to wait for the hub (default 30)")

    p = add_command(
        "request",
        help="send a request through a network hub and print the reply as JSON",
        description="Send one end-to-end encrypted request through a network hub and wait for "
        "the reply (the peer answers with msg.reply). Prints the reply as one JSON line; exits "
        "1 when the peer answers with an error, or no reply comes within --timeout.",
    )
    _message_args(p, "request text", "seconds to wait for the reply (default 30)")

    from . import cli_hub_stats

    cli_hub_stats.add_parser(sub, [logging_flags])

    p = add_command(
        "chat",
        help="talk with one agent: lines from stdin go to it, what comes in is printed",
        description="Talk and listen with one identity: every line read from standard input is "
        "sent to --to; every message that comes in (from anyone) is printed as '[sender] text' "
        "(or JSON with --json). Ends at the end of input, after --linger seconds more of "
        "listening, or on Ctrl-C.",
    )
    _hub_args(p)
    _key_args(p)
    p.add_argument("--to", required=True, metavar="ID", help="who the lines go to")
    p.add_argument("--json", action="store_true", help="print incoming messages as JSON lines")
    p.add_argument(
        "--linger",
        type=float,
        default=2.0,
        help="seconds to keep listening after the input ends (default 2)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the hub (default 30)"
    )

    p = add_command(
        "listen",
        help="print incoming messages as JSON lines until interrupted",
        description="Receive messages through a network hub and print each as one JSON line "
        "on stdout, until Ctrl-C / SIGTERM (or --count messages). Binary payload values are "
        'printed as {"bytes": size, "base64": ...}, or saved to files with --save-dir.',
    )
    _hub_args(p)
    _key_args(p)
    p.add_argument(
        "--count",
        type=int,
        default=0,
        help=(
            "exit once N messages were printed (0: never); messages of the same batch "
            "are printed too, never dropped"
        ),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="give up after N seconds (status 1 if --count was not reached)",
    )
    p.add_argument(
        "--from",
        dest="senders",
        action="append",
        metavar="ID",
        help="print only messages from this agent (repeatable); the others are received and "
        "reported on stderr, not left for another listener",
    )
    p.add_argument(
        "--save-dir",
        metavar="DIR",
        help="write each binary value of a message to a file in DIR (<id>-<filename>, or "
        "<id>-<n>.bin) and print its path instead of its base64",
    )

    p = add_command(
        "peers",
        help="list the agents registered on a network hub",
        description="Print the ids of the agents registered on a network hub, one per line.",
    )
    _hub_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--online", action="store_true", help="only the agents connected now")
    p.add_argument(
        "--timeout", type=float, default=CONNECT_TIMEOUT, help="seconds to wait for the hub"
    )

    add_nats_dev_parser(add_command)
    add_nats_auth_parser(add_command)

    add_command(
        "demo",
        help="run the local encrypted demo (no network)",
        description="Two agents on an in-process hub exchange encrypted messages.",
    )
    return parser


def _passphrase_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="name of an environment variable holding the key file's passphrase",
    )


def _hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", required=True, metavar="HOST:PORT", help="network hub address")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system trust store)")
    p.add_argument(
        "--cafile",
        metavar="PEM",
        help="connect with TLS, trusting this CA / self-signed certificate",
    )


def _message_args(p: argparse.ArgumentParser, text_help: str, timeout_help: str) -> None:
    """What ``send`` and ``request`` take: where, who, what, and how long to wait."""
    _hub_args(p)
    _key_args(p)
    p.add_argument("--to", required=True, metavar="ID", help="recipient agent id")
    p.add_argument("--text", default="", help=f"{text_help} ('-': read it from standard input)")
    p.add_argument("--text-file", metavar="PATH", help="read the text from this UTF-8 file")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="attach this file: its bytes travel as binary payload field 'data' (no base64), "
        "its name as 'filename' (at most 4 MiB)",
    )
    p.add_argument(
        "--payload",
        metavar="JSON",
        help='extra payload fields as a JSON object, e.g. \'{"type": "task", "n": 3}\'',
    )
    p.add_argument("--timeout", type=float, default=30.0, help=timeout_help)


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="PATH", help="this agent's key file")
    _passphrase_arg(p)
