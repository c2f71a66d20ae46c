"""The kernel message pump: widget messages handled while a cell runs, so a Stop button
reaches a running training loop.

------------------------------------------
A click travels as a ``comm_msg`` on the kernel's shell channel. ipykernel handles shell
messages one at a time on the main thread's event loop, and that loop is blocked while a cell
runs, so a click would normally be handled only after training ended. ipykernel 7 reads the
shell socket in a "shell channel" thread and forwards every message for the main shell to the
main thread over an inproc socket, where a ``ZMQStream`` hands it to ``kernel.shell_main``, which
waits for ``kernel._main_asyncio_lock`` (held by the running cell) before it dispatches.
(jupyter-ui-poll, the usual fix, calls ``kernel.do_one_iteration()``, which ipykernel 7.4 no
longer has: it swallows the AttributeError and the click never arrives.)

:func:`handle_widget_messages` (called by :attr:`LiveDashboard.stop_requested` at most every
0.2 s) reads whatever is waiting on that main-thread socket without blocking, from the main
thread that owns it:

- ``comm_open``/``comm_msg``/``comm_close`` are deserialized and passed straight to the comm
  manager's handler (a plain function, as ipykernel itself does for comms that arrive while an
  async cell holds the lock), with the kernel's parent header set to the comm message and put
  back afterwards, so the cell's own output still goes to the cell. The button's handler runs
  there and sets the stop flag.
- Anything else (the next cell's ``execute_request``, completion or inspection requests) is
  never dispatched here: it is handed back unread to the stream's own callback through
  ``io_loop.add_callback``, so when the loop regains control it goes through ``shell_main``
  exactly as if it had just arrived, queues on the same asyncio lock (first come, first served,
  behind the running cell) and runs after the cell. The next cell therefore cannot run inside
  this one. (jupyter-ui-poll reaches the same end differently: it swaps the kernel's
  ``execute_request`` handler for one that stores requests, and replays them after the cell's
  ``post_run_cell`` event.)

Only the header is peeked at first (``Session.deserialize(content=False)`` leaves the signature
unrecorded, so the kernel's later full deserialization does not reject it as a replay).
ipykernel 6 (6.29) has no shell channel thread: the main thread reads ``kernel.shell_stream``
itself, and the same steps apply to that stream (its callback queues the message behind the
running cell). Outside a kernel or off the main thread it does nothing.
"""
from __future__ import annotations

import os
import sys
import threading

_COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})


def running_kernel():
    """The running IPython kernel, or None (plain Python, terminal IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def handle_widget_messages() -> int:
    """Handle the widget (comm) messages that reached the kernel while the current cell runs.

    Returns how many were handled. Other shell messages are handed back to the kernel, which
    runs them after the current cell. Does nothing outside a kernel or off the main thread.
    """
    kernel = running_kernel()
    if kernel is None or threading.current_thread() is not threading.main_thread():
        return 0
    channel_thread = getattr(kernel, "shell_channel_thread", None)
    if channel_thread is not None:  # ipykernel 7: messages for the main shell come over inproc
        stream = channel_thread.manager.get_shell_channel_to_subshell_pair(None).to_stream
    else:
        stream = getattr(kernel, "shell_stream", None)
    if stream is None or stream.socket is None:
        return 0
    import zmq

    handled = 0
    while True:
        try:
            frames = stream.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return handled
        msg_type, idents, parts = _peek(kernel.session, frames)
        if msg_type in _COMM_MESSAGES:
            _handle_comm(kernel, stream, idents, parts)
            handled += 1
        else:  # back to the kernel's own path: it waits for this cell, then runs
            kernel.io_loop.add_callback(stream._recv_callback, frames)


def _peek(session, frames):
    """(msg_type, idents, frames after the delimiter); msg_type None if not a regular message."""
    try:
        idents, parts = session.feed_identities(frames, copy=False)
        return session.deserialize(parts, content=False, copy=False)["header"]["msg_type"], idents, parts
    except Exception:  # e.g. ipykernel's one-frame "stop aborting" marker: the kernel handles it
        return None, None, None


def _handle_comm(kernel, stream, idents, parts) -> None:
    """Run one comm message's handler now, as ipykernel does for comms during an async cell."""
    try:
        msg = kernel.session.deserialize(parts, content=True, copy=False)
    except Exception:
        kernel.log.error("Invalid comm message", exc_info=True)
        return
    parent, parent_ident = kernel.get_parent("shell"), kernel._parent_ident["shell"]
    kernel.set_parent(idents, msg, channel="shell")
    try:
        kernel.shell_handlers[msg["header"]["msg_type"]](stream, idents, msg)
    finally:
        kernel.set_parent(parent_ident, parent, channel="shell")



def in_jupyter_frontend() -> bool:
    """True inside a kernel that jupyter_server started (JupyterLab, Notebook), which is where
    widgets render; False in papermill and nbclient kernels, terminal IPython and scripts."""
    return running_kernel() is not None and bool(os.environ.get("JPY_SESSION_NAME"))
