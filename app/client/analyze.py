"""`vocalborn analyze`: upload recordings into one practice session, submit them, follow the
session's progress stream with one bar per recording, print each result as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.prompt import Confirm

from app.client.api import TERMINAL, Api, ApiError, Doc
from app.client.follow import Follower
from app.client.render import eta_text, result_view, status_line, step_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Options:
    files: list[Path]
    session_id: str | None
    parameters: dict[str, Any]
    json_output: bool
    cancel_on_interrupt: bool
    fresh: bool = False  # analyse again even when the result cache has the result


@dataclass
class _Tracked:
    name: str
    task_id: str
    bar: TaskID
    last_line: str = ""
    reported: bool = False


@dataclass
class _Run:
    api: Api
    progress: Progress  # its console: stdout, or stderr under --json
    tracked: dict[str, _Tracked] = field(default_factory=dict)
    results: dict[str, Doc] = field(default_factory=dict)
    pending_results: set[asyncio.Task[None]] = field(default_factory=set)

    def on_update(self, doc: Doc) -> None:
        item = self.tracked[str(doc["task_id"])]
        self.progress.update(
            item.bar,
            completed=int(doc.get("progress") or 0),
            step=step_text(doc),
            eta=eta_text(doc),
        )
        line = status_line(item.name, doc)
        if not self.progress.console.is_terminal and line != item.last_line:
            self.progress.console.print(line, highlight=False, soft_wrap=True)
        item.last_line = line
        if doc["status"] in TERMINAL and not item.reported:
            item.reported = True
            task = asyncio.create_task(self.report(item, doc))
            self.pending_results.add(task)

    async def report(self, item: _Tracked, doc: Doc) -> None:
        if doc["status"] == "success":
            result = await self.api.result(item.task_id)
            self.results[item.task_id] = result
            self.say(result_view(item.name, result))
        else:
            self.results[item.task_id] = doc
            reason = "" if doc["status"] == "cancelled" else f" ({doc.get('error_code')}: "
            reason += f"{doc.get('error_message')})" if reason else ""
            self.say(f"{item.name}: {doc['status']}{reason}")

    def say(self, renderable: Any) -> None:
        """Result tables go with the progress (stderr) under --json, else to stdout."""
        self.progress.console.print(renderable, highlight=False)


async def analyze(api: Api, options: Options, out: Console, err: Console) -> int:
    """The whole command; returns its exit code (uploads and submits first, then follows)."""
    session_id = options.session_id
    if session_id is None:
        title = "vocalborn analyze: " + ", ".join(p.name for p in options.files)
        session_id = str((await api.create_session(title[:200]))["practice_session_id"])
    else:
        await api.session(session_id)  # 404 now rather than after the uploads
    status_console = err if options.json_output else out
    status_console.print(f"practice session {session_id}", highlight=False)
    submitted: list[tuple[Path, Doc]] = []
    for path in options.files:
        try:
            record = await api.upload(session_id, path)
        except ApiError as exc:  # say which file (415 for a type the API does not take)
            raise ApiError(exc.status, exc.code, f"{path}: {exc.message}") from exc
        submitted.append((path, record))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[step]}"),
        TextColumn("{task.fields[eta]}"),
        console=status_console,
        transient=False,
    )
    run = _Run(api, progress)
    order: list[str] = []
    for path, record in submitted:
        record_id = str(record["practice_record_id"])
        task = await api.submit(record_id, options.parameters, fresh=options.fresh)
        task_id = str(task["task_id"])
        order.append(task_id)
        bar = progress.add_task(path.name, total=100, step="", eta="")
        run.tracked[task_id] = _Tracked(path.name, task_id, bar)
        status_console.print(f"{path.name}: task {task_id}", highlight=False)
        if task.get("reused_from_task_id"):
            status_console.print(
                f"{path.name}: the result of task {task['reused_from_task_id']} (the same"
                " recording and parameters), reused; --fresh analyses again",
                highlight=False,
            )

    def notice(message: str) -> None:
        status_console.print(message, style="dim", highlight=False)

    follower = Follower(api, session_id, order, run.on_update, notice=notice)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        with progress:
            following = asyncio.create_task(follower.run())
            waiting = asyncio.create_task(interrupted.wait())
            await asyncio.wait({following, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if following.done():
                following.result()  # raises what stopped it
            else:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
            if follower.done and run.pending_results:
                await asyncio.gather(*run.pending_results)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if not follower.done:  # interrupted
        return await _interrupted(api, run, follower, options, status_console)
    if options.json_output:  # plain JSON on stdout alone, for scripts
        documents = [run.results[task_id] for task_id in order]
        out.file.write(json.dumps(documents, ensure_ascii=False, indent=2) + "\n")
        out.file.flush()
    final = {task_id: doc["status"] for task_id, doc in follower.latest.items() if doc}
    ok = all(final.get(task_id) == "success" for task_id in order)
    return EXIT_OK if ok else EXIT_FAILED


async def _interrupted(
    api: Api, run: _Run, follower: Follower, options: Options, console: Console
) -> int:
    running = [
        task_id
        for task_id, doc in follower.latest.items()
        if doc is None or doc["status"] not in TERMINAL
    ]
    cancel = options.cancel_on_interrupt
    if not cancel and sys.stdin.isatty():
        question = f"Interrupted. Cancel the {len(running)} running task(s)?"
        cancel = await asyncio.to_thread(Confirm.ask, question, console=console, default=False)
    if cancel:
        for task_id in running:
            with contextlib.suppress(ApiError):  # finished meanwhile
                await api.cancel(task_id)
            console.print(f"{run.tracked[task_id].name}: cancel requested ({task_id})")
    else:
        for task_id in running:
            console.print(f"{run.tracked[task_id].name}: left running, task {task_id}")
    return EXIT_INTERRUPTED
