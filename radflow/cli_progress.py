"""The command line's progress bars, fed by :mod:`radflow.flows._progress` events."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Progress", "with_progress"]


class Progress:
    """Rich progress bars fed by :mod:`radflow.flows._progress` events."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=False, refresh_per_second=4,  # (rendered in the flow process)
        )
        self.tasks: dict[str, Any] = {}
        self.dashboards: set[str] = set()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        stage = info.get("stage", "")
        if event == "dashboard" and info["url"] not in self.dashboards:
            self.dashboards.add(info["url"])
            self.console.print(f"[bold]Dask dashboard:[/bold] {info['url']}")
        elif event == "note":
            self.console.print(info.get("text", ""))
        elif event == "stage-start":
            self.tasks[stage] = self.progress.add_task(stage, total=info.get("total"))
        elif event == "stage-advance" and stage in self.tasks:
            self.progress.advance(self.tasks[stage], info.get("advance", 1))
        elif event == "stage-end" and stage in self.tasks:
            t = self.tasks.pop(stage)
            task = next(x for x in self.progress.tasks if x.id == t)
            total = task.total if task.total else 1
            self.progress.update(t, total=total, completed=total)

    def __enter__(self) -> "Progress":
        from radflow.flows._progress import listen

        self._listen = listen(self)
        self._listen.__enter__()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)
        self._listen.__exit__(*exc)


def with_progress(fn: Callable[[], Any]) -> Any:
    with Progress():
        return fn()
