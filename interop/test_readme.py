"""The README, run as a newcomer would: the quick start and each section's commands in a
fresh directory, the files it shows written where it says, the usage lines checked against
the command's parser, the pytest examples run with pytest.

Commands run as written but for the ports: the customary ones (1883, 8883, ...) become
free ones, a command that names none gets the free MQTT port, and 0.0.0.0 becomes
127.0.0.1. `make run` runs what the Makefile's run target runs. Everything happens under
tmp_path and on loopback.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from polybroker.cli import build_parser

from .clients import WAIT, OutputProcess
from .conftest import require_tool

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
COMMANDS = ("polybroker", "mosquitto_sub", "mosquitto_pub", "echo", "make")
CUSTOMARY_PORTS = (1883, 8883, 8083, 8084, 61613, 61612, 61614, 61615, 5672, 5671,
                   18083, 18084)


# -- reading the README ---------------------------------------------------------------------

def sections() -> dict[str, str]:
    """Top-level section title -> its text."""
    parts = re.split(r"^## (.+)$", README, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(text: str) -> list[str]:
    """The code blocks of ``text``: fenced ones and indented (4 spaces) ones, in order."""
    found: list[tuple[int, str]] = []
    for match in re.finditer(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        found.append((match.start(), match.group(1)))
    fenced = [(m.start(), m.end()) for m in
              re.finditer(r"^```.*?^```", text, flags=re.MULTILINE | re.DOTALL)]
    for match in re.finditer(r"(?:(?<=\n\n)|^)((?: {4}.*\n|\n)+)", text):
        if match.group(1).strip() and not any(start <= match.start() < end
                                              for start, end in fenced):
            lines = [line[4:] for line in match.group(1).rstrip("\n").split("\n")]
            found.append((match.start(), "\n".join(lines).strip("\n") + "\n"))
    return [body for _, body in sorted(found)]


def commands(block: str) -> list[str]:
    """A block's shell commands (continuation lines joined), or [] if it holds none."""
    joined = block.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines or lines[0].split()[0] not in COMMANDS:
        return []
    return lines


def named_file(block: str) -> str | None:
    match = re.match(r"# file: (\S+)\n", block)
    return match.group(1) if match else None


# -- running commands -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Session:
    """One README section's commands in one directory, with their background processes:
    a broker runs until the next one starts (or the section ends), as in a terminal."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ports = {port: free_port() for port in CUSTOMARY_PORTS}
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.background: list[subprocess.Popen | OutputProcess] = []
        self.subscribers: list[OutputProcess] = []
        self.published: list[tuple[str, str]] = []

    def localize(self, text: str) -> str:
        text = text.replace("0.0.0.0", "127.0.0.1")
        for customary, free in self.ports.items():
            text = re.sub(rf"(?<=[: ]){customary}\b", str(free), text)
        return text

    def write(self, name: str, block: str) -> None:
        (self.dir / name).write_text(self.localize(block))

    def run(self, command: str) -> None:
        command = self.localize(command)
        words = shlex.split(command, comments=True)
        if words[:2] == ["make", "run"]:
            recipe = re.search(r"^run:.*\n\t(.+)$", (ROOT / "Makefile").read_text(),
                               flags=re.MULTILINE).group(1)
            assert recipe == "$(VENV)/bin/polybroker serve"
            command, words = "polybroker serve", ["polybroker", "serve"]
        if words[:1] == ["make"]:
            assert re.search(rf"^{words[1]}:", (ROOT / "Makefile").read_text(), re.MULTILINE)
            return  # make test runs this very suite
        if words[:2] == ["polybroker", "serve"]:
            self.serve(command, words)
        elif words[0] in ("mosquitto_sub", "mosquitto_pub"):
            self.mosquitto(command, words)
        else:
            out = subprocess.run(["bash", "-c", command], cwd=self.dir, env=self.env,
                                 capture_output=True, text=True, timeout=WAIT)
            assert out.returncode == 0, f"{command}\n{out.stdout}{out.stderr}"

    def serve(self, command: str, words: list[str]) -> None:
        self.close()  # as a user stops one example's broker before starting the next
        if "--listen" not in words and "--config" not in words:
            command += f" --listen mqtt://127.0.0.1:{self.ports[1883]}"
        broker = OutputProcess(["bash", "-c", f"exec {command}"], cwd=self.dir, env=self.env)
        self.background.append(broker)
        broker.wait_for_line(r"polybroker \S+ ready", timeout=20)

    def mosquitto(self, command: str, words: list[str]) -> None:
        tool = require_tool(words[0])
        if "-p" not in words:
            command = command.replace(words[0], f"{words[0]} -p {self.ports[1883]}", 1)
        if words[0] == "mosquitto_sub":
            assert command.endswith("&"), "a subscriber in the README runs in the background"
            # -d: wait for its SUBACK; stdbuf: its lines as they come, not when it exits
            argv = [require_tool("stdbuf"), "-oL", tool, *shlex.split(command)[1:-1], "-d"]
            subscriber = OutputProcess(argv, cwd=self.dir, env=self.env)
            self.background.append(subscriber)
            self.subscribers.append(subscriber)
            subscriber.wait_for_line(r"received SUBACK")
            return
        out = subprocess.run([tool, *shlex.split(command)[1:]], cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, f"{command}\n{out.stdout}{out.stderr}"
        topic = re.sub(r"^\$delayed/\d+/", "", words[words.index("-t") + 1])  # when due
        self.published.append((topic, words[words.index("-m") + 1]))

    def check_deliveries(self) -> None:
        for subscriber in self.subscribers:
            for topic, message in self.published:
                subscriber.wait_for_line(rf"^{re.escape(topic)} {re.escape(message)}$")

    def close(self) -> None:
        background, self.background, self.subscribers = self.background, [], []
        for process in reversed(background):
            proc = process.proc if isinstance(process, OutputProcess) else process
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_section(title: str, directory: Path) -> int:
    """Write the section's files and run its command blocks; the commands run."""
    session = Session(directory)
    ran = 0
    try:
        for block in blocks(sections()[title]):
            name = named_file(block)
            if name is not None:
                session.write(name, block)
                continue
            block_commands = commands(block)
            for command in block_commands:
                session.run(command)
            ran += len(block_commands)
            session.check_deliveries()
            session.published = []
    finally:
        session.close()
    return ran


# -- the tests ------------------------------------------------------------------------------

def test_quick_start_is_two_commands_then_a_client(tmp_path):
    quick = blocks(sections()["Quick start"])
    assert commands(quick[0]) == ["make run     # the broker on its embedded defaults: MQTT "
                                  "on 127.0.0.1:1883, data in ./data",
                                  "make test    # the whole test suite"]
    assert run_section("Quick start", tmp_path) == 4
    assert (tmp_path / "data" / "store").is_dir()  # the embedded default data directory


@pytest.mark.parametrize(("title", "count"), [
    ("TLS", 7), ("WebSocket", 2), ("Authentication and authorization", 4), ("Logging", 3),
    ("MQTT 5.0", 1), ("STOMP behaviour", 1), ("AMQP behaviour", 1), ("Delayed delivery", 3),
    ("Streams", 3), ("Operating the broker", 14),
])
def test_section_commands_run_in_a_fresh_directory(tmp_path, title, count):
    assert run_section(title, tmp_path) == count


def test_acl_example_is_valid_and_in_force(tmp_path):
    run_section("Authentication and authorization", tmp_path)
    from polybroker.auth.acl import load_acl  # the file as the README wrote it

    acl = load_acl(tmp_path / "acl")
    assert acl.may_publish("alice", "c", "sensors/t1")
    assert not acl.may_subscribe("alice", "c", "sensors/#")  # overlaps the deny
    assert acl.may_subscribe("alice", "c", "sensors/t1")
    assert acl.may_use_queue("alice", "c", "jobs.1", "read")
    assert acl.may_subscribe(None, "c", "status/#")


def test_pytest_examples_pass_with_the_installed_plugin(tmp_path):
    examples = [block for block in blocks(sections()["Testing with polybroker"])
                if (named_file(block) or "").startswith("test_")]
    assert len(examples) == 3
    for block in examples:
        assert len(block.strip().splitlines()) <= 12  # about ten lines each
        (tmp_path / named_file(block)).write_text(block)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


def test_embedding_example_runs(tmp_path):
    (example,) = [block for block in blocks(sections()["WebSocket"])
                  if block.startswith("import trio")]
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                         text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"MQTT on port \d+\n", out.stdout)


def usage_lines() -> dict[str, str]:
    """Command -> its usage text (continuation lines joined) in "Running the broker"."""
    (usage,) = [block for block in blocks(sections()["Running the broker"])
                if block.startswith("polybroker serve [")]
    found: dict[str, str] = {}
    for line in usage.splitlines():
        if line.startswith("polybroker "):
            current = line.split()[1]
            found[current] = line
        else:
            found[current] += " " + line.strip()
    return found


def parser_actions(command: str) -> list[list[str]]:
    """The option strings of each option of ``command``, but help."""
    subparsers = build_parser()._subparsers._group_actions[0].choices
    return [action.option_strings for action in subparsers[command]._actions
            if action.option_strings and "--help" not in action.option_strings]


def test_usage_lines_name_every_command_and_option():
    usage = usage_lines()
    assert set(usage) == set(build_parser()._subparsers._group_actions[0].choices)
    for command, text in usage.items():
        named = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text))
        actions = parser_actions(command)
        assert named <= {option for strings in actions for option in strings}, command
        for strings in actions:
            assert named & set(strings), f"{command}: {strings} missing from the usage"
    # Repeatable options are shown repeated, as they must be given.
    assert "[--client NAME [--client NAME ...]]" in usage["certs"]


def test_every_polybroker_command_line_parses():
    lines = [command for block in blocks(README) for command in commands(block)
             if command.startswith("polybroker ") and "[" not in command]
    assert len(lines) >= 10
    for line in lines:
        words = shlex.split(line.split("|")[-1] if "|" in line else line, comments=True)
        args = words[1:words.index(">>")] if ">>" in words else words[1:]
        build_parser().parse_args(args)  # SystemExit (a failure) if not
