"""The ``agentmesh`` command.

Exit codes: 0 success, 1 a runtime failure (hub unreachable, peer unknown, bad key file, ...),
2 a usage error. Results go to stdout (one value or one JSON object per line); logs and error
messages go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_nats import cmd_nats_dev
from .cli_nats_auth import cmd_nats_auth
from .cli_parser import CONNECT_TIMEOUT, build_parser
from .errors import AgentMeshError

log = logging.getLogger("agentmesh.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _UsageError(AgentMeshError):
    """Bad arguments discovered after parsing (exit 2)."""


# --------------------------------------------------------------------------------------------


def _passphrase(args: argparse.Namespace) -> str | None:
    var = getattr(args, "passphrase_env", None)
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise _UsageError(f"environment variable {var!r} (from --passphrase-env) is not set")
    if not value:
        raise _UsageError(f"environment variable {var!r} (from --passphrase-env) is empty")
    return value


def _hub(args: argparse.Namespace) -> Any:
    from .hubs import HubAddress, NetworkHub

    try:
        address = HubAddress.parse(args.hub)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    host, port = address.host, address.port
    ssl_ctx: Any = None
    if args.cafile:
        import ssl

        try:
            ssl_ctx = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"cannot load --cafile {args.cafile!r}: {exc}") from exc
    elif args.tls or address.tls:
        ssl_ctx = True
    # --timeout bounds connecting and lookups too (listen's --timeout is how long it listens)
    wait = getattr(args, "timeout", 0) or 0
    bound = CONNECT_TIMEOUT if args.command == "listen" or wait <= 0 else wait
    return NetworkHub(host, port, ssl=ssl_ctx, connect_timeout=bound, timeout=bound)


def _agent_id_of_key(path: str, passphrase: str | None) -> str:
    from .keystore import KeyStore

    store = KeyStore(path, passphrase=passphrase)
    if not store.exists():
        raise FileNotFoundError(
            f"key file {path!r} does not exist (create it with 'agentmesh keygen --path {path}')"
        )
    return str(store.load_identity().agent_id)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .agent import validate_agent_id
    from .keystore import KeyStore

    agent_id = args.agent_id or Path(args.path).stem
    try:
        validate_agent_id(agent_id, "--id")
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    store = KeyStore(args.path, passphrase=_passphrase(args))
    kp = store.create_identity(agent_id)
    log.info("created identity %r in %s (mode 0600)", agent_id, args.path)
    print(kp.fingerprint)
    return EXIT_OK


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from .keystore import KeyStore

    store = KeyStore(args.path, passphrase=_passphrase(args))
    if not store.exists():
        raise FileNotFoundError(f"key file {args.path!r} does not exist")
    kp = store.load_identity()
    if args.json:
        print(json.dumps({"agent_id": kp.agent_id, "fingerprint": kp.fingerprint}))
    else:
        print(kp.fingerprint)
    return EXIT_OK


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    from .agent import Agent

    passphrase = _passphrase(args)
    agent_id = _agent_id_of_key(args.key, passphrase)
    hub = _hub(args) if args.hub else None
    with Agent(agent_id, hub=hub, keypair_path=args.key, passphrase=passphrase) as agent:
        old = agent.fingerprint
        new = agent.rotate_identity()
    if args.json:
        print(json.dumps({"agent_id": agent_id, "old_fingerprint": old, "fingerprint": new}))
    else:
        print(f"{old} -> {new}")
    return EXIT_OK


def _text_of(args: argparse.Namespace) -> str:
    """``--text`` ("-": standard input) or ``--text-file``, as UTF-8 text."""
    if args.text_file is not None:
        if args.text:
            raise _UsageError("give --text or --text-file, not both")
        try:
            with open(args.text_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"cannot read --text-file {args.text_file!r}: {exc}") from None
    if args.text == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise _UsageError(f"standard input is not UTF-8 text: {exc}") from None
    return str(args.text)


def _payload_of(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if args.payload:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise _UsageError(f"--payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _UsageError("--payload must be a JSON object")
    text = _text_of(args)
    if "text" in payload and (text or args.text_file is not None):
        raise _UsageError("--payload has a 'text' field and --text (or --text-file) gives one too")
    if args.file is None:
        return {"text": text, **payload}
    from . import cli_files

    clash = [k for k in cli_files.FILE_FIELDS if k in payload]
    if clash:
        raise _UsageError(f"--payload has a {clash[0]!r} field and --file sets it too")
    try:
        return {"text": text, **payload, **cli_files.file_fields(args.file)}
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _open_agent(args: argparse.Namespace, hub: Any, wait: float) -> Any:
    """The key file's agent on ``hub``; if another agent holds the identity (a parallel
    ``send``), wait up to ``wait`` seconds for it to let go."""
    from .agent import Agent
    from .errors import IdentityInUseError

    passphrase = _passphrase(args)
    agent_id = _agent_id_of_key(args.key, passphrase)
    deadline = time.monotonic() + max(0.0, wait)
    pause = 0.05
    while True:
        try:
            return Agent(agent_id, hub=hub, keypair_path=args.key, passphrase=passphrase)
        except IdentityInUseError as exc:
            if time.monotonic() + pause > deadline:
                raise IdentityInUseError(
                    f"{exc} (waited {wait:g} s; to send while listening with one identity, "
                    "use 'agentmesh chat')"
                ) from None
            if pause == 0.05:  # (said once)
                log.info("waiting for the identity: %s", exc)
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def _with_agent(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    """Run ``work(agent)`` with the key file's agent on the hub, then close both. An identity
    in use by another agent is waited for (up to ``--timeout``)."""
    hub = _hub(args)
    try:
        agent = _open_agent(args, hub, args.timeout)
        try:
            return work(agent)
        finally:
            agent.close(timeout=args.timeout)
    finally:
        hub.close()


def _cmd_send(args: argparse.Namespace) -> int:
    payload = _payload_of(args)

    def send(agent: Any) -> Any:
        env = agent.send_payload(args.to, payload)
        agent.flush(timeout=args.timeout)
        return env

    env = _with_agent(args, send)
    print(env.id)
    log.info("sent %s to %r", env.id, args.to)
    return EXIT_OK


def _cmd_request(args: argparse.Namespace) -> int:
    payload = _payload_of(args)
    reply = _with_agent(
        args, lambda agent: agent.request_payload(args.to, payload, timeout=args.timeout)
    )
    print(json.dumps(reply.to_dict(), ensure_ascii=False))
    return EXIT_OK


def _cmd_hub_stats(args: argparse.Namespace) -> int:
    from . import cli_hub_stats

    try:
        print(cli_hub_stats.run(args))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    return EXIT_OK


def _cmd_chat(args: argparse.Namespace) -> int:
    hub = _hub(args)
    lock = threading.Lock()
    try:
        agent = _open_agent(args, hub, args.timeout)
        try:

            @agent.on_message
            def show(msg: Any) -> None:
                line = (
                    json.dumps(msg.to_dict(), ensure_ascii=False)
                    if args.json
                    else f"[{msg.sender}] {msg.text}"
                )
                with lock:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()

            @agent.on_error
            def rejected(exc: BaseException) -> None:
                log.warning("rejected an envelope from %r: %s", getattr(exc, "sender", None), exc)

            log.info("chatting as %r with %r on %s", agent.agent_id, args.to, args.hub)
            try:
                for line in sys.stdin:
                    text = line.rstrip("\n")
                    if text:
                        agent.send(args.to, text=text)
                agent.flush(args.timeout)
                time.sleep(max(0.0, args.linger))  # (the answers to the last lines)
            except KeyboardInterrupt:
                pass
        finally:
            agent.close(timeout=args.timeout)
    finally:
        hub.close()
    return EXIT_OK


def _cmd_listen(args: argparse.Namespace) -> int:
    from . import cli_files
    from .agent import Agent

    if args.count < 0:
        raise _UsageError("--count must be >= 0")
    if args.save_dir is not None and not os.path.isdir(args.save_dir):
        raise _UsageError(f"--save-dir {args.save_dir!r} is not a directory")
    passphrase = _passphrase(args)
    agent_id = _agent_id_of_key(args.key, passphrase)
    stop = threading.Event()
    count = 0
    lock = threading.Lock()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            old[sig] = signal.signal(sig, on_signal)
    hub = _hub(args)
    try:
        agent = Agent(agent_id, hub=hub, keypair_path=args.key, passphrase=passphrase)

        @agent.on_error
        def rejected(exc: BaseException) -> None:
            log.warning("rejected an envelope from %r: %s", getattr(exc, "sender", None), exc)

        @agent.on_message
        def show(msg: Any) -> None:
            nonlocal count
            if args.senders and msg.sender not in args.senders:
                log.warning(
                    "received a message from %r (not one of --from): %s", msg.sender, msg.id
                )
                return
            # Every message handled is printed, also past --count: it has been acknowledged to
            # the hub and would otherwise be lost to the next listener.
            shown = msg.to_dict()
            if args.save_dir is not None:
                shown["payload"] = cli_files.saved_payload(msg, args.save_dir)
            with lock:
                sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
                sys.stdout.flush()
                count += 1
                if args.count and count >= args.count:
                    stop.set()

        log.info("listening as %r (%s) on %s", agent_id, agent.fingerprint, args.hub)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        timed_out = False
        while not stop.wait(0.25):  # short waits: signals are handled promptly
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
        agent.close()
    finally:
        hub.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if timed_out and args.count:
        log.error("timed out after %s s with %d of %d message(s)", args.timeout, count, args.count)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_peers(args: argparse.Namespace) -> int:
    hub = _hub(args)
    try:
        agents = hub.list_agents()
        if args.online:
            agents = [agent_id for agent_id in agents if hub.is_online(agent_id)]
    finally:
        hub.close()
    if args.json:
        print(json.dumps(agents))
    else:
        for agent_id in agents:
            print(agent_id)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main([])


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else logging.INFO
        if verbose == 1
        else (logging.DEBUG if verbose >= 2 else logging.WARNING)
    )
    root = logging.getLogger("agentmesh")
    if not any(getattr(h, "_agentmesh_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("agentmesh: %(levelname)s: %(message)s"))
        handler._agentmesh_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("agentmesh.cli").setLevel(min(level, logging.INFO) if not quiet else level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``agentmesh`` command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # 'hub' hands every remaining flag to the hub server's own parser
    hub_index = next((i for i, a in enumerate(args_list) if not a.startswith("-")), None)
    if hub_index is not None and args_list[hub_index] == "hub":
        from .hub_server import main as hub_main

        return int(hub_main(args_list[hub_index + 1 :]) or 0)

    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(version("agentmesh"))
        except PackageNotFoundError:
            print("unknown")
        return EXIT_OK
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)
    handler = {
        "keygen": _cmd_keygen,
        "fingerprint": _cmd_fingerprint,
        "rotate-key": _cmd_rotate_key,
        "send": _cmd_send,
        "request": _cmd_request,
        "chat": _cmd_chat,
        "hub-stats": _cmd_hub_stats,
        "listen": _cmd_listen,
        "peers": _cmd_peers,
        "demo": _cmd_demo,
        "nats-dev": cmd_nats_dev,
        "nats-auth": cmd_nats_auth,
    }[args.command]
    try:
        return handler(args)
    except _UsageError as exc:
        print(f"agentmesh {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "listen" else 130
    except Exception as exc:  # every runtime failure: a clear line, exit 1
        log.debug("failure", exc_info=True)
        print(f"agentmesh {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
