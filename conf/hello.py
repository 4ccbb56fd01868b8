"""The example app of conf/: says which virtual host it serves, which instance answered (HELLO_INSTANCE, set
with ``env =`` in the INI files) and how many body bytes it received."""

import os


def application(environ, start_response):
    lines = [f"Hello from uwsgirouter: you asked {environ.get('HTTP_HOST')}{environ.get('PATH_INFO')}"]
    if "HELLO_INSTANCE" in os.environ:
        lines.append(f"answered by {os.environ['HELLO_INSTANCE']}")
    if environ.get("REQUEST_METHOD") == "POST":
        lines.append(f"you sent {len(environ['wsgi.input'].read())} bytes")
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
