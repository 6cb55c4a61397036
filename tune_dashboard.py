"""A live view of a search: python tune_dashboard.py --config configs/tune/<name>.yaml [--port N]

optuna-dashboard on the study's own storage (models/tune/<study>.db, or TUNE_STORAGE), on http://127.0.0.1:<port>/
(a free port when none is given); it follows the workers as trials finish. Ctrl-C stops it; the study is untouched.
"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.tune.dashboard import dashboard_server


@cli
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ctx, args = parse_stage_args(parser, argv)
    server = dashboard_server(ctx.cfg, args.config, args.port)
    host, port = server.server_address[:2]
    print(f"tune dashboard: http://{host}:{port}/ (study of {args.config})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
