"""I/O at the edge: sources, sinks (exports), the command line, live and replay runners."""
