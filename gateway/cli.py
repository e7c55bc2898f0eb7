"""The `parrot` command: `serve` (the gateway), `engine` (one engine server), `bench NAME`,
`loadtest`."""

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
    _builtin_flags(p)
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        help="require this bearer key (tenant 'default'); repeatable",
    )
    p.add_argument("--keys-file", help="file of 'KEY [TENANT]' lines")
    p.add_argument("--config", help="TOML settings file (keys as in gateway/settings.py)")
    p.add_argument("--log-level", help="debug, info, warning, error")


def _builtin_flags(p: argparse.ArgumentParser) -> None:
    """Options of the builtin engine, shared by `serve` (its local engine) and `engine`."""
    g = p.add_argument_group("builtin engine")
    g.add_argument("--device", help="cpu (default) or cuda")
    g.add_argument("--dtype", help="bfloat16 (default), float16 or float32")
    g.add_argument("--kv-cache-mb", type=int, help="KV cache budget in MiB (default 2048)")
    g.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        default=None,
        help="turn off automatic block-hash prefix reuse (the request-level baseline)",
    )
    g.add_argument(
        "--no-native-kernels",
        dest="native_kernels",
        action="store_false",
        default=None,
        help="CPU decode attention, layer ops (norms, rotary, SwiGLU) and decode matmuls "
        "with torch ops and oneDNN instead of the C kernels (parrot_kernels/native.py)",
    )
    g.add_argument("--max-batch-size", type=int, help="sequences stepped together (default 64)")
    g.add_argument("--max-step-tokens", type=int, help="token budget per step (default 512)")
    g.add_argument("--latency-cap", type=int, help="batch cap while latency work is live")
    g.add_argument(
        "--latency-step-tokens",
        type=int,
        help="tokens a step may hold with throughput work in it while latency work is live "
        "(default 128)",
    )
    g.add_argument(
        "--throughput-share",
        type=float,
        help="share of step time throughput work keeps while latency work is live (default "
        "0.1; 1 lets it into every step)",
    )
    g.add_argument(
        "--followup-hold",
        dest="followup_hold_s",
        type=float,
        help="seconds throughput work waits for the latency-critical call a finished one "
        "feeds (the next link of a chain) before taking the engine (default 0.05; 0: off)",
    )
    g.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    g.add_argument(
        "--attention-threads",
        type=int,
        help="torch threads for the attention of steps with long contexts (default: all cores)",
    )
    g.add_argument(
        "--wide-attention-context",
        type=int,
        metavar="KEYS",
        help="mean keys a step's tokens attend to from which its attention runs on "
        "--attention-threads (default 2048)",
    )
    g.add_argument(
        "--step-trace", metavar="PATH", help="append a JSON line per engine step (profiling)"
    )


def _engine_parser(sub: Any) -> None:
    p = sub.add_parser("engine", help="serve one engine over HTTP for gateways to use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", help="weights for the builtin engine (default: embedded)")
    p.add_argument("--echo", action="store_true", help="the model-free echo backend")
    _builtin_flags(p)
    p.add_argument(
        "--backend", choices=BACKENDS, help="builtin (default), echo, openai, sglang, sim"
    )
    p.add_argument("--upstream", metavar="URL", help="openai/sglang: the server to drive")
    p.add_argument("--upstream-model", help="openai/sglang: served model (default: the first)")
    p.add_argument(
        "--tokenizer", help="openai/sglang: .gguf, HF dir or 'embedded' (default: /tokenize)"
    )
    p.add_argument("--context-length", type=int, help="openai/sglang: if the upstream omits it")
    p.add_argument("--priority-field", help="openai: body field for objectives (e.g. priority)")
    p.add_argument("--priority-lower-first", action="store_true", help="upstream runs low first")
    p.add_argument("--sglang-priority", action="store_true", help="send SGLang's priority")
    p.add_argument(
        "--sglang-model", metavar="PATH", help="sglang: run this model in process (not --upstream)"
    )
    p.add_argument(
        "--sglang-arg",
        dest="sglang_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sglang in process: a ServerArgs option (e.g. tp_size=2); repeatable",
    )
    p.add_argument("--sim-profile", default="cpu-smollm2", help="sim: preset name or JSON path")
    p.add_argument("--sim-speedup", type=float, default=1.0, help="sim: x real time")
    p.add_argument(
        "--register", metavar="GATEWAY_URL", help="announce this engine to a gateway once serving"
    )
    p.add_argument("--advertise-url", help="URL --register announces (default: http://HOST:PORT)")
    p.add_argument("--api-key", help="bearer key for --register")
    p.add_argument("--log-level", default="warning")


BACKENDS = ("builtin", "echo", "openai", "sglang", "sim")


def _backend(args: argparse.Namespace) -> tuple[str, Any]:
    """The engine `parrot engine` serves, built from its flags; imports only what it needs."""
    kind = args.backend or ("echo" if args.echo else "builtin")
    engine_id = f"{kind}-{args.port}"
    if kind == "openai" and not args.upstream:
        raise SystemExit("parrot engine: --backend openai needs --upstream URL")
    if kind == "sglang" and bool(args.upstream) == bool(args.sglang_model):
        raise SystemExit(
            "parrot engine: --backend sglang needs one of --upstream URL and --sglang-model PATH"
        )
    if kind == "echo":
        from engine.echo import EchoEngine

        return kind, EchoEngine(engine_id=engine_id)
    if kind == "openai":
        from engine.openai.factory import create_openai_engine

        return kind, create_openai_engine(
            args.upstream,
            model=args.upstream_model,
            tokenizer=args.tokenizer,
            context_length=args.context_length,
            priority_field=args.priority_field,
            priority_lower_first=args.priority_lower_first,
            engine_id=engine_id,
        )
    if kind == "sglang":
        from engine.sglang.factory import create_sglang_engine

        try:
            return kind, create_sglang_engine(
                args.upstream,
                model_path=args.sglang_model,
                runtime_options=args.sglang_args,
                model=args.upstream_model,
                tokenizer=args.tokenizer,
                context_length=args.context_length,
                send_priority=args.sglang_priority,
                priority_lower_first=args.priority_lower_first,
                engine_id=engine_id,
            )
        except ValueError as exc:
            raise SystemExit(f"parrot engine: {exc}") from exc
    if kind == "sim":
        from engine.sim.engine import SimEngine
        from engine.sim.profile import load_profile

        return kind, SimEngine(load_profile(args.sim_profile), engine_id, args.sim_speedup)
    from gateway.engines import builtin_engine
    from gateway.settings import Settings, load_settings

    names = set(Settings.__struct_fields__) & set(vars(args))
    settings = load_settings({k: getattr(args, k) for k in names if k not in ("host", "port")})
    return kind, builtin_engine(settings, engine_id)


async def _run(app: Any, host: str, port: int, log_level: str, on_ready: Callable[[], Any]) -> int:
    # Idle keep-alive connections outlive common clients' own expiry (httpx: 5 s), so the
    # client closes them first: with uvicorn's default of 5 s both sides race, and a client
    # reusing a connection the server just closed gets a connection error mid-request.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=75,
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
    kind, backend = _backend(args)
    app = create_engine_app(backend)
    url = f"http://{args.host}:{args.port}"

    async def ready() -> None:
        print(f"Parrot engine ({kind}) serving at {url}", flush=True)
        if args.register:
            await _register(args.register, args.advertise_url or url, args.api_key)

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


def loadtest(argv: list[str]) -> int:
    """`parrot loadtest ...` runs `loadtest.soak.main(argv)`: locust users, headless."""
    from loadtest.soak import main as run_loadtest

    return int(run_loadtest(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parrot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _engine_parser(sub)
    b = sub.add_parser(
        "bench", help="run a benchmark: gateway, engine, attention, apps, gpu, cluster"
    )
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    # Listed for --help only: main() hands its flags to loadtest.soak's own parser.
    sub.add_parser("loadtest", help="headless locust load test (parrot loadtest --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadtest"]:
        return loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"serve": serve, "engine": engine, "bench": bench}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
