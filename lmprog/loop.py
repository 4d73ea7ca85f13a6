"""The one event loop every program runs on, and the bridge that lets plain code wait on it.

Sync program bodies and `async def` bodies both run inside a greenlet driven by an asyncio task
on a single background loop. When a body reads a value that is not there yet, its greenlet
hands the wait to the task and is resumed with the result: thousands of programs in flight cost
greenlets and coroutines, never an OS thread each. Code outside the loop (a script, a notebook
cell) waits with an ordinary blocking call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")

EXECUTOR_THREADS = 4

_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()
_finalizers: list[weakref.finalize[Any, Any]] = []  # HTTP sessions to close at exit
_closing: set[asyncio.Task[Any]] = set()


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use; it lives as long as the process."""
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            # Blocking helpers (host-name lookups, sync tools) get a small fixed pool: the
            # thread count stays flat however many programs are in flight.
            loop.set_default_executor(
                ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="lmprog-io")
            )
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=serve, name="lmprog-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
            atexit.register(_stop_loop)
        return _loop


def running_or_lmprog_loop() -> asyncio.AbstractEventLoop:
    """The loop this code runs on, or lmprog's (where a client made outside any loop is used)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return get_loop()


def _stop_loop() -> None:
    if _loop is not None and _loop.is_running():
        closes = []
        for finalizer in _finalizers:
            found = finalizer.detach()  # (owner, function, args, kwargs), None once it ran
            if found is not None and found[2][0] is _loop:
                closes.append(found[2][1])
        if closes:
            with contextlib.suppress(Exception):
                submit(_close_all(closes)).result(timeout=2.0)
        _loop.call_soon_threadsafe(_loop.stop)


async def _close_all(closes: list[Callable[[], Awaitable[Any]]]) -> None:
    await asyncio.gather(*(close() for close in closes), return_exceptions=True)


def close_with(
    owner: object, on: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[Any]]
) -> None:
    """Run `close()` (an HTTP session's) on loop `on` once `owner` is garbage-collected, or at
    exit before lmprog's loop stops, so no session is left for aiohttp to warn about."""
    _finalizers[:] = [f for f in _finalizers if f.alive]
    finalizer = weakref.finalize(owner, _close_later, on, close)
    finalizer.atexit = False
    _finalizers.append(finalizer)


def _close_later(on: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[Any]]) -> None:
    if on.is_closed() or not on.is_running():
        return

    def start() -> None:
        task = on.create_task(_close_all([close]))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        on.call_soon_threadsafe(start)


def on_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> ConcurrentFuture[T]:
    """Schedule a coroutine on the background loop from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


class _BodyGreenlet(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet that runs one program body; only these may suspend on a value."""


def in_program_body() -> bool:
    return isinstance(greenlet.getcurrent(), _BodyGreenlet)


def wait(awaitable: Awaitable[T]) -> T:
    """Wait for `awaitable` from plain (non-async) code, wherever that code runs.

    Inside a program body it suspends the body's greenlet; on any other thread it blocks that
    thread. Blocking the loop's own thread would deadlock, so that is refused with advice.
    """
    current = greenlet.getcurrent()
    if isinstance(current, _BodyGreenlet):
        parent = current.parent
        assert parent is not None
        result: T = parent.switch(awaitable)
        return result
    if on_loop_thread():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError(
            "a blocking lmprog call was made on lmprog's event loop outside a program body; "
            "use the async form (e.g. `await state.aget(name)`, `await prog.arun(...)`)"
        )
    return result_of(submit(_as_coroutine(awaitable)))


def result_of(future: ConcurrentFuture[T]) -> T:
    """Block for a loop future, waking often so Ctrl-C is seen within a tenth of a second."""
    while True:
        try:
            return future.result(timeout=0.1)
        except FuturesTimeout:
            continue


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def await_on_loop(awaitable: Awaitable[T]) -> T:
    """Await something that lives on lmprog's loop from whatever loop the caller runs."""
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return await awaitable
    return await asyncio.wrap_future(submit(_as_coroutine(awaitable)))


async def run_body(body: Callable[..., Any], *args: Any) -> Any:
    """Run a sync function or an `async def` in a body greenlet; return what it returns.

    Must be awaited on the background loop. Every wait the body makes is served here.
    """
    child = _BodyGreenlet(_call_body)
    request = child.switch(body, args)
    while not child.dead:
        try:
            result = await request
        except BaseException as exc:  # hand every outcome, cancellation included, to the body
            request = child.throw(exc)
        else:
            request = child.switch(result)
    return request


def _call_body(body: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    result = body(*args)
    if asyncio.iscoroutine(result):
        return _drive_coroutine(result)
    return result


def _drive_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Step an `async def` body inside its greenlet, handing each await to the driving task.

    This lets an async body also call blocking-looking reads such as `s["x"]`: they suspend
    the same greenlet, exactly as in a sync body.
    """
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            yielded = coro.send(to_send) if to_throw is None else coro.throw(to_throw)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        to_send, to_throw = None, None
        try:
            wait(_settle(yielded))
        except BaseException as exc:  # the driving task was cancelled: let the body see it
            to_throw = exc


async def _settle(yielded: Any) -> None:
    """Await what an async body yielded to its task (a future, or None for a bare yield).

    The body reads the future's own outcome when resumed, so only a cancellation of the driving
    task itself propagates from here.
    """
    if yielded is None:
        await asyncio.sleep(0)
        return
    future: asyncio.Future[Any] = yielded
    future._asyncio_future_blocking = False
    try:
        await future
    except BaseException:
        if not future.done():
            raise


def iterate(agen_factory: Callable[[], Any]) -> Generator[Any, None, None]:
    """Turn an async iterator into a blocking one for code outside the loop."""
    agen = agen_factory()
    while True:
        try:
            item = wait(agen.__anext__())
        except StopAsyncIteration:
            return
        yield item
