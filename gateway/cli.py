"""The `parrot` command: `serve` (the gateway), `engine` (one engine server), `bench NAME`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

log = logging.getLogger("parrot")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--model", help="weights for the local builtin engine (default: embedded)")
    p.add_argument(
        "--echo",
        action="store_true",
        default=None,
        help="local engine is the model-free echo backend (benchmarks, demos)",
    )
    p.add_argument(
        "--no-local-engine",
        dest="local_engine",
        action="store_false",
        default=None,
        help="no in-process engine: a pure gateway over --engine-url engines",
    )
    p.add_argument(
        "--engine-url",
        dest="engine_urls",
        action="append",
        help="a remote engine (`parrot engine`); repeatable",
    )
    p.add_argument("--redis", dest="redis_url", help="keep gateway state in this Redis URL")
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        help="require this bearer key (tenant 'default'); repeatable",
    )
    p.add_argument("--keys-file", help="file of 'KEY [TENANT]' lines")
    p.add_argument("--config", help="TOML settings file (keys as in gateway/settings.py)")
    p.add_argument("--log-level", help="debug, info, warning, error")


def _engine_parser(sub: Any) -> None:
    p = sub.add_parser("engine", help="serve one engine over HTTP for gateways to use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", help="weights for the builtin engine (default: embedded)")
    p.add_argument("--echo", action="store_true", help="the model-free echo backend")
    p.add_argument(
        "--register", metavar="GATEWAY_URL", help="announce this engine to a gateway once serving"
    )
    p.add_argument("--api-key", help="bearer key for --register")
    p.add_argument("--log-level", default="warning")


async def _run(app: Any, host: str, port: int, log_level: str, on_ready: Callable[[], Any]) -> int:
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        result = on_ready()
        if asyncio.iscoroutine(result):
            await result
    await task
    return 0 if server.started else 1


def _banner(app: Any, host: str, port: int) -> None:
    services = app.state.services
    base = f"http://{host}:{port}/v1"
    models = list(services.pool.models()) or ["<no engine up yet>"]
    model = models[0]
    auth = services.auth.enabled
    state = "redis" if services.settings.redis_url else "memory"
    key_header = " -H 'Authorization: Bearer $PARROT_KEY'" if auth else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    api_key = "os.environ['PARROT_KEY']" if auth else "'unused'"
    print(
        f"Parrot gateway ready at {base}\n"
        f"  models: {', '.join(models)} | engines: {len(services.pool.members)} | state: {state}"
        f" | docs: http://{host}:{port}/docs\n\n"
        f"  curl {base}/chat/completions -H 'Content-Type: application/json'{key_header} \\\n"
        f"    -d '{body}'\n\n"
        f'  python -c "import os; from openai import OpenAI; '
        f"c = OpenAI(base_url='{base}', api_key={api_key}); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', "
        f"'content': 'Hello!'}}]).choices[0].message.content)\"",
        flush=True,
    )


def serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.settings import load_settings

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    settings = load_settings(flags, config_file=args.config)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    return asyncio.run(
        _run(
            app,
            settings.host,
            settings.port,
            settings.log_level,
            lambda: _banner(app, settings.host, settings.port),
        )
    )


def engine(args: argparse.Namespace) -> int:
    from engine.server import create_engine_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.echo:
        from engine.echo import EchoEngine

        backend: Any = EchoEngine(engine_id=f"echo-{args.port}")
    else:
        from engine.builtin.factory import create_builtin_engine

        backend = create_builtin_engine(args.model)
    app = create_engine_app(backend)
    url = f"http://{args.host}:{args.port}"

    async def ready() -> None:
        print(f"Parrot engine ({'echo' if args.echo else 'builtin'}) serving at {url}", flush=True)
        if args.register:
            await _register(args.register, url, args.api_key)

    return asyncio.run(_run(app, args.host, args.port, args.log_level, ready))


async def _register(gateway: str, url: str, api_key: str | None) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{gateway.rstrip('/')}/admin/engines", json={"url": url}, headers=headers
            )
        response.raise_for_status()
        print(f"registered with {gateway}", flush=True)
    except httpx.HTTPError as exc:
        log.error("could not register with %s: %s", gateway, exc)


def bench(args: argparse.Namespace) -> int:
    """`parrot bench NAME ...` runs `loadtest.bench_NAME.main(argv)`."""
    try:
        module = importlib.import_module(f"loadtest.bench_{args.name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"loadtest.bench_{args.name}":
            raise
        print(f"parrot bench: no benchmark named '{args.name}'", file=sys.stderr)
        return 2
    return int(module.main(args.args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parrot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _engine_parser(sub)
    b = sub.add_parser("bench", help="run a benchmark: gateway, engine, apps, gpu, cluster")
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    commands = {"serve": serve, "engine": engine, "bench": bench}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
