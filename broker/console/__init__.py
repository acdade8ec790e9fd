"""`keyferry console`: an operator console in the browser, on the operator's own machine.

A small web server on loopback (a random port) that talks to the broker's admin listener
with the operator's mutual-TLS context, as the CLI does: no new listener or
authentication on the broker; the console can do exactly what the operator's certificate
and Cedar allow, and every action is audited as that operator.

- admin.py: the admin API calls the pages make (one gRPC channel, the operator's);
- security.py: the one-time token, the session cookie, CSRF, the Host check, headers;
- jobs.py: rotations and revocations running in the background, and their progress;
- chart.py: the activity chart, an inline SVG drawn on the server;
- pages/: one module per page; templates/: their Jinja2 templates;
- app.py: the Starlette application; serve.py: uvicorn on a loopback socket.

No secret value is ever sent to the browser: the console never asks for a credential.
"""
