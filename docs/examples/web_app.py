"""
A twisted.web application with a Gearman job server inside it.

The web page ``/reverse?text=...`` hands the work to a Gearman worker
through the embedded job server (in-process, no network); the same job
server also listens on a TCP port, so workers and clients elsewhere can
join in.

Run it with ``python docs/examples/web_app.py`` (web on 8080, Gearman on
4730), or ``python docs/examples/web_app.py --demo`` to serve on free
ports, fetch one page and exit.
"""

from __future__ import annotations

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, task
from twisted.web import resource, server

from txgearmand import GearmanServerFactory, JobServer
from txgearmand.client import GearmanClient
from txgearmand.inprocess import InProcessEndpoint
from txgearmand.worker import GearmanWorker


class Reverse(resource.Resource):
    isLeaf = True

    def __init__(self, client: GearmanClient) -> None:
        super().__init__()
        self.client = client

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        text = request.args.get(b"text", [b""])[0]
        d = self.client.submit("reverse", text)

        def done(result: bytes) -> None:
            request.setHeader(b"content-type", b"text/plain")
            request.write(result)
            request.finish()

        d.addCallback(done)
        return server.NOT_DONE_YET


def make_app(reactor, web_port: str, gearman_port: str) -> MultiService:  # type: ignore[no-untyped-def]
    """
    The whole application as one service: the job server, its Gearman
    port, a worker and the web site.
    """
    app = MultiService()
    jobs = JobServer(reactor)
    jobs.setServiceParent(app)
    StreamServerEndpointService(
        endpoints.serverFromString(reactor, gearman_port), GearmanServerFactory(jobs)
    ).setServiceParent(app)

    local = InProcessEndpoint(reactor, jobs)
    worker = GearmanWorker(local, reactor)
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.setServiceParent(app)
    client = GearmanClient(local, reactor)
    client.setServiceParent(app)

    web = StreamServerEndpointService(
        endpoints.serverFromString(reactor, web_port), server.Site(Reverse(client))
    )
    web.setName("web")
    web.setServiceParent(app)
    return app


async def demo(reactor) -> bytes:  # type: ignore[no-untyped-def]
    from twisted.web.client import Agent, readBody

    app = make_app(reactor, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
    app.startService()
    try:
        port = await app.getServiceNamed("web")._waitingForPort  # type: ignore[attr-defined]
        url = b"http://127.0.0.1:%d/reverse?text=stressed" % port.getHost().port
        response = await Agent(reactor).request(b"GET", url)
        body = await readBody(response)
    finally:
        await app.stopService()
    print(f"GET /reverse?text=stressed -> {body.decode()}")
    return body


def main(reactor, *argv: str):  # type: ignore[no-untyped-def]
    if "--demo" in argv:
        return defer.Deferred.fromCoroutine(demo(reactor))
    app = make_app(reactor, "tcp:8080", "tcp:4730")
    app.startService()
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)
    return defer.Deferred()


if __name__ == "__main__":
    task.react(
        lambda reactor: defer.maybeDeferred(main, reactor, *sys.argv[1:]).addCallback(
            lambda _: None
        )
    )
