"""The benchmark, one command:

    uv run python -m bench                   # every scenario, full size (~20 min on 2 cores)
    uv run python -m bench --quick           # every scenario, small (under 2 min; CI runs it)
    uv run python -m bench --only dispatch   # one scenario (repeatable; groups: api, celery)
    uv run python -m bench --write           # also update bench/RESULTS.md

It starts its own PostgreSQL and Redis (app/embedded.py), the fake AI service and the
service's processes under a temp dir, runs each scenario with its baselines interleaved in the
same rounds, prints a markdown table per scenario and stops everything it started, by PID, on
the way out (errors and Ctrl-C included). It exits 1 only if a scenario crashed, never because
a goal was missed. bench/README.md says what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench.context import Context
from bench.harness import Processes, raise_fd_limit
from bench.report import Section, load_average, render_section, run_info, write_results
from bench.scenarios import GROUPS, SCENARIOS, Scenario
from bench.stack import Stack


def parse_args(argv: list[str]) -> argparse.Namespace:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one round each")
    parser.add_argument(
        "--only",
        action="append",
        choices=[*names, *GROUPS],
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)}; groups: "
        + ", ".join(f"{g} = {'+'.join(m)}" for g, m in GROUPS.items()),
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per scenario (default: 3, 2 for iobound; quick: 1)"
    )
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy our API/worker over the last round's window (bench/results/profiles/)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for our API and worker processes (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (every log)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser.parse_args(argv)


def selected(only: list[str] | None) -> list[Scenario]:
    if not only:
        return list(SCENARIOS)
    wanted = {name for item in only for name in GROUPS.get(item, [item])}
    return [s for s in SCENARIOS if s.name in wanted]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """The first SIGINT or SIGTERM stops the run; later ones (a second Ctrl-C, `uv run`
    forwarding the terminal's) are ignored, so that nothing interrupts the clean-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


async def run(
    args: argparse.Namespace, workdir: Path, stack: Stack
) -> tuple[list[Section], list[str]]:
    command = "uv run python -m bench" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    sections: list[Section] = []
    crashed: list[str] = []
    await stack.start()
    ctx = Context(
        stack,
        stack.processes,
        workdir,
        quick=args.quick,
        rounds_override=args.rounds,
        profile=args.profile,
        write=args.write,
    )
    try:
        for scenario in selected(args.only):
            load_before = load_average()
            started = time.monotonic()
            print(f"\n## {scenario.name}: {scenario.summary}", file=sys.stderr, flush=True)
            try:
                section = await scenario.run(ctx)
            except Exception:
                crashed.append(scenario.name)
                print(f"scenario {scenario.name} CRASHED:", file=sys.stderr)
                traceback.print_exc()
                continue
            section.seconds = time.monotonic() - started
            section.run = run_info(command, quick=args.quick, load_before=load_before)
            sections.append(section)
            print(f"\n### {section.title}\n\n{render_section(section, quick=args.quick)}\n")
            print(f"({scenario.name}: {section.seconds:.0f} s)", file=sys.stderr, flush=True)
    finally:
        await ctx.close()
        stack.processes.stop_all()  # before the servers they use
        await stack.close()
    return sections, crashed


def main() -> int:
    args = parse_args(sys.argv[1:])
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:10} {scenario.summary}")
        return 0
    extra_env = dict(item.split("=", 1) for item in args.env)
    raise_fd_limit()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="vocalborn-bench-"))
    processes = Processes(workdir)
    stack = Stack(workdir, processes, extra_env)
    started = time.monotonic()
    sections: list[Section] = []
    crashed: list[str] = []
    try:
        import uvloop

        sections, crashed = uvloop.run(run(args, workdir, stack))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        crashed.append("(interrupted)")
    except Exception:
        traceback.print_exc()
        crashed.append("(harness)")
    finally:
        processes.stop_all()
        for server in (stack.redis_server, stack.postgres):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:
                    print(f"stopping {server}: {exc!r}", file=sys.stderr)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.write and sections:
        write_results(sections, [s.name for s in SCENARIOS])
        print("written: bench/RESULTS.md", file=sys.stderr)
    elapsed = time.monotonic() - started
    print(f"\nbench: {len(sections)} scenario(s) in {elapsed:.0f} s", file=sys.stderr)
    if crashed:
        print(f"bench: CRASHED: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
