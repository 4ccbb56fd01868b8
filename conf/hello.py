"""The quick start's app: says which virtual host it serves."""


def application(environ, start_response):
    body = f"Hello from uwsgirouter: you asked {environ.get('HTTP_HOST')}{environ.get('PATH_INFO')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
