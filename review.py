"""The label review page: python review.py --config ... [--port N] [run=<id>]

Serves the candidates of `make relabel` on http://127.0.0.1:<port>/ (a free port when none is given); accept, reject
or edit each; every decision is saved at once to models/<exp>/<run>/label_fixes_reviewed.csv. Ctrl-C stops it.
"""

from maskcomp.analyze.review import review_server
from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ctx, args = parse_stage_args(parser, argv)
    server = review_server(ctx.cfg, args.port)
    review = server.RequestHandlerClass.review
    host, port = server.server_address[:2]
    print(f"review page: http://{host}:{port}/ ({len(review.candidates)} candidates of run {review.run.label})")
    print(f"decisions go to {review.run.reviewed_fixes}; then: {review.retrain}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"stopped; decisions are in {review.run.reviewed_fixes}")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
