"""chat-api behaviour: everything app.py wires together. See README.md for the map."""
