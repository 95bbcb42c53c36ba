"""`--profile`: py-spy samples a process over a measured window (collapsed stacks, one
`frame;frame;... count` line per stack, in bench/results/profiles/; only samples that hold
the GIL) and prints where the time went: the functions most often on top of the stack (self),
and the service's own functions most often on it at all (total)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from bench.harness import BENCH, Child, Processes, child_env

PROFILES = BENCH / "results" / "profiles"
PY_SPY = Path(sys.executable).parent / "py-spy"
OWN, WORKER = "(app/", "(worker/"
# Libraries by the path in py-spy's frame names; a sample counts for each one on its stack.
LIBRARIES = {
    "aiohttp (AI client)": ("(aiohttp/", "(yarl/", "(multidict/"),
    "sqlalchemy": ("(sqlalchemy/",),
    "asyncpg": ("(asyncpg/",),
    "redis-py": ("(redis/",),
    "arq (job machinery)": ("Worker.run_job", "Worker.start_jobs", "Worker.finish_job"),
    "pydantic": ("(pydantic/", "(pydantic_core/"),
    "logging": ("(logging/",),
    "json": ("(json/",),
    "imports at run time": ("(<frozen importlib._bootstrap>)",),
    "threads (to_thread)": ("(concurrent/futures/thread.py)",),
    "fastapi/starlette": ("(fastapi/", "(starlette/"),
    "jwt": ("(jwt/",),
}


class Profile:
    """py-spy on `pid` from start() until finish()."""

    def __init__(self, processes: Processes, pid: int, name: str) -> None:
        self.processes = processes
        self.pid = pid
        self.name = name
        self.output = PROFILES / f"{name}.txt"
        self.child: Child | None = None

    def start(self) -> Profile:
        PROFILES.mkdir(parents=True, exist_ok=True)
        self.output.unlink(missing_ok=True)
        # --gil: only samples holding the GIL, i.e. CPU the process spends in Python
        argv = [str(PY_SPY), "record", "--pid", str(self.pid), "--format", "raw", "--nolineno"]
        argv += ["--gil"]
        argv += ["--output", str(self.output)]
        self.child = self.processes.start(f"py-spy-{self.name}", argv, child_env({}))
        return self

    async def finish(self, top: int = 15) -> str:
        """Stop py-spy (SIGINT: it writes its file); the summary, also printed to stderr."""
        if self.child is None:
            return ""
        await asyncio.to_thread(self.processes.stop, self.child, signal.SIGINT)
        if not self.output.exists():
            return f"profile {self.name}: py-spy wrote nothing ({self.child.output()})"
        text = summarize(self.output.read_text(), top)
        summary = f"profile {self.name} ({self.output.relative_to(BENCH.parent)}):\n{text}"
        print(summary, file=sys.stderr)
        return summary


def summarize(collapsed: str, top: int) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        for library, marks in LIBRARIES.items():
            if any(mark in stack for mark in marks):
                libraries[library] += count
    if not samples:
        return "  (no samples)"
    lines = [f"  {samples} samples; self:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("  by library (on the stack):")
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in libraries.most_common()]
    lines.append("  total (on the stack), the service's own functions:")
    inclusive = [(f, n) for f, n in total.most_common() if OWN in f or WORKER in f][:top]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in inclusive]
    return "\n".join(lines)
