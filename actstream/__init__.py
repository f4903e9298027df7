"""actstream: real-time activity and speech recognition. The command is actstream.cli."""
