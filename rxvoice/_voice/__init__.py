"""The parts of :class:`rxvoice.Connection`, one job each (reactive layer, private).

- :mod:`~rxvoice._voice.credentials`: voice credentials from the main gateway,
  and the moves and reallocations it announces;
- :mod:`~rxvoice._voice.runner`: the connection while it runs: WebSockets,
  resumes, new sessions, the close policy;
- :mod:`~rxvoice._voice.session`: one voice session (gateway messages, keys,
  DAVE, the receiver and its timer, the session's tasks);
- :mod:`~rxvoice._voice.sender`: speaking state and paced Opus sending.
"""
