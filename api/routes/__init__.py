"""One module per resource; each route parses, authorises, calls one function, shapes the answer."""
