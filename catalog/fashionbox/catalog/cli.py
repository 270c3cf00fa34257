"""``fashionbox catalog index|prune|info|export|search|similar|duplicates|web``: the catalog's subcommands.

``fashionbox.commands.cli`` adds them with :func:`add_catalog_arguments` and runs
:func:`catalog_main`; this module imports nothing heavy until a subcommand runs. Results go to
stdout (``--json``: JSON), progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fashionbox.client import DEFAULT_MAX_IN_FLIGHT, DEFAULT_URL
from fashionbox.client.connection import add_connection_arguments, connection_from_arguments

_ERRORS_SHOWN = 20
"""Failed or deferred images listed after a run (all of them are in ``--json`` and in the database)."""


def _url(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _urls(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return [_url(u) for u in urls]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _where(p: argparse.ArgumentParser) -> None:
    from .database import DEFAULT_CATALOG

    p.add_argument("--catalog", type=Path, default=None,
                   help=f"catalog folder: the embedded PostgreSQL's data and uploads (default {DEFAULT_CATALOG})")
    p.add_argument("--database", metavar="URL", default=None,
                   help="postgresql://... of any PostgreSQL with pgvector, instead of the embedded one")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--category", help="garment category, e.g. dress")
    p.add_argument("--attribute", action="append", default=[], metavar="GROUP=LABEL",
                   help='e.g. "sleeve length=wrist-length" (repeat for several)')
    p.add_argument("--min-score", type=float, default=0.0, help="minimum detection score")
    p.add_argument("--board", help="only images on this board")
    p.add_argument("--label", help="only images whose top image-level label is this (e.g. a product vertical)")


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="catalog_command", required=True)

    p = sub.add_parser("index", help="send every image of a folder through the server into the catalog")
    p.add_argument("folders", type=Path, nargs="+", metavar="DIR")
    p.add_argument("--url", type=_urls, default=[DEFAULT_URL], metavar="HOST:PORT[,HOST:PORT...]",
                   help="server gRPC HOST:PORT; with --ray, several replicas separated by commas (round robin)")
    _where(p)
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help="requests in flight at once (with --ray: per server)")
    p.add_argument("--ray", action="store_true",
                   help="run as a Ray Data pipeline (needs fashionbox-catalog[ray]): a local Ray, or --ray-address")
    p.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="--ray: join this Ray cluster (auto, HOST:6379, ray://HOST:10001) instead of a local Ray; "
                        "the files must be at the same paths on every node")
    p.add_argument("--ray-cpus", type=_positive, default=2, help="--ray: CPUs of the local Ray (default 2)")
    p.add_argument("--ray-actors", type=_positive, default=1,
                   help="--ray: detect actors, each sending to every server round robin (default 1)")
    p.add_argument("--bulk", action=argparse.BooleanOptionalAction, default=None,
                   help="build the vector indexes once at the end of the run instead of row by row (faster for "
                        "many images; queries run exact meanwhile); default: when the new images are at least "
                        "100 and as many as the catalog holds; --watch keeps them row by row")
    p.add_argument("--watch", action="store_true", help="keep running and index new files as they appear")
    p.add_argument("--prune", action="store_true",
                   help="also remove the images of these folders whose files are gone (as `catalog prune` does, "
                        "without --force); with --watch, as they go")
    p.add_argument("--poll-s", type=float, default=2.0, help="--watch: seconds between scans")
    p.add_argument("--json", action="store_true", help="print the run's report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_connection_arguments(p)

    p = sub.add_parser("prune", help="remove the images whose files are gone (deleted or moved) from the catalog")
    p.add_argument("folders", type=Path, nargs="*", metavar="DIR",
                   help="only images under these folders (default: every indexed folder)")
    _where(p)
    p.add_argument("--dry-run", action="store_true", help="list what is gone, remove nothing")
    p.add_argument("--force", action="store_true",
                   help="remove them also where a folder is not there, or none of its images is (refused "
                        "without it: a disk that is not mounted looks like that)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("info", help="what the catalog holds: images, garments, folders, embedding models and "
                                    "their indexes, size")
    _where(p)
    p.add_argument("--json", action="store_true", help="print it as JSON")

    p = sub.add_parser("export", help="copy a board's photos into a folder (to hand a set of references on)")
    p.add_argument("folder", type=Path, metavar="DIR", help="where the photos go (made if needed; nothing overwritten)")
    p.add_argument("--board", required=True, help="the board")
    _where(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("search", help="garments by category, attributes, image-level label or words, ranked, "
                                      "grouped by image")
    _where(p)
    _filters(p)
    p.add_argument("--text", metavar="WORDS", help='rank garments by similarity to these words (e.g. "red floral '
                   'dress"); needs a server with a text tower (--embedder hf:CLIP-or-SigLIP) at --url')
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help="server gRPC HOST:PORT (for --text)")
    add_connection_arguments(p)
    p.add_argument("--limit", type=int, default=50, help="images to return")
    p.add_argument("--json", action="store_true",
                   help="JSON rows: image, category, box, attributes, score (--text: similarity)")

    p = sub.add_parser("similar", help="garments like a garment of a photo (indexed or new), grouped by image")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the query photo: indexed (found by path or content) "
                   "or new (sent through the server at --url)")
    p.add_argument("--garment", type=int, default=None, metavar="N",
                   help="which garment of the photo, numbered from 1 as the image page lists them "
                        "(default: the best-scoring one)")
    _where(p)
    _filters(p)
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help="server gRPC HOST:PORT (for a photo not indexed)")
    add_connection_arguments(p)
    p.add_argument("--limit", type=int, default=20, help="images to return")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW candidate list size (default: the measured one)")
    p.add_argument("--json", action="store_true",
                   help="JSON rows: image, category, box, attributes, similarity (grouped by image)")

    p = sub.add_parser("duplicates", help="groups of exact copies, near copies (perceptual hash) and transformed "
                                          "copies (garment vectors)")
    _where(p)
    p.add_argument("--kind", choices=("all", "exact", "near", "transformed"), default="all")
    p.add_argument("--max-distance", type=int, default=None,
                   help="near copies: pHash Hamming distance in bits (default: the measured one)")
    p.add_argument("--min-cosine", type=float, default=None,
                   help="transformed copies (crop, flip, colour): how alike two photos' garments must be, each "
                        "garment's best cosine similarity in the other photo, averaged (default: the measured one)")
    p.add_argument("--board", help="only images on this board")
    p.add_argument("--json", action="store_true", help="a list of groups, each a list of image paths")

    p = sub.add_parser("web", help="the catalog's web page: browse, filter, upload, boards, duplicates")
    _where(p)
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help="server gRPC HOST:PORT (for uploads)")
    add_connection_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name the page is reached by, besides loopback's and --host (repeat for several; * for "
                        "any): other names in Host are refused, against DNS rebinding")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest upload accepted")


def catalog_main(args: argparse.Namespace) -> int:
    from .errors import CatalogError

    command = {"index": _index, "prune": _prune, "info": _info, "export": _export, "search": _search,
               "similar": _similar, "duplicates": _duplicates, "web": _web}[args.catalog_command]
    try:
        return command(args)
    except (CatalogError, FileNotFoundError) as exc:  # the library raises; the command says what was wrong
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _open(args: argparse.Namespace) -> Any:
    from .database import Database

    return Database.open(catalog=args.catalog, database_url=args.database)


def _index(args: argparse.Namespace) -> int:
    from fashionbox.client import FashionClient

    from .errors import CatalogError
    from .indexer import Indexer, IndexReport, Progress
    from .prune import PruneReport, prune_lines

    if not args.ray and len(args.url) > 1:
        raise CatalogError("several servers in --url need --ray (the plain indexer sends to one server)")
    if not args.ray and (args.ray_address is not None):
        raise CatalogError("--ray-address needs --ray")
    if args.ray and args.watch:
        raise CatalogError("--watch runs the plain indexer; leave out --ray")
    if args.bulk and args.watch:
        raise CatalogError("--bulk is for one run: --watch keeps the vector indexes row by row")
    connection = connection_from_arguments(args)
    if args.ray:
        from .ray_indexer import import_ray

        import_ray()  # the install hint before the database starts
    db = _open(args)
    quiet = args.quiet

    def progress(p: Progress) -> None:
        if not quiet:
            print(p.line(), file=sys.stderr, flush=True)

    def summary(report: IndexReport) -> None:
        if args.json:
            print(json.dumps(report.to_dict()), flush=True)
        else:
            print(f"{report.indexed} indexed, {report.copied} exact copies, {report.skipped} unchanged, "
                  f"{report.failed} failed, {report.deferred} deferred in {report.elapsed_s:.1f} s "
                  + (f"(vector indexes built at the end: {report.index_build_s:.1f} s) " if report.bulk else "")
                  + f"({db.describe()})", file=sys.stderr, flush=True)
        for path, message in report.errors[:_ERRORS_SHOWN]:
            print(f"  {path}: {message}", file=sys.stderr)
        if len(report.errors) > _ERRORS_SHOWN:
            print(f"  ... and {len(report.errors) - _ERRORS_SHOWN} more", file=sys.stderr)

    def pruned(report: PruneReport) -> None:
        if args.json:
            print(json.dumps({"pruned": report.to_dict()}), flush=True)
        else:
            for line in prune_lines(report, shown=_ERRORS_SHOWN):
                print(line, file=sys.stderr, flush=True)

    if args.ray:
        from .ray_indexer import RayIndexer, RayOptions

        options = RayOptions(address=args.ray_address, num_cpus=args.ray_cpus, actors=args.ray_actors)
        reports = RayIndexer(db, args.url, max_in_flight=args.max_in_flight, progress=progress,
                             options=options, bulk=args.bulk, connection=connection).index_folders(args.folders)
        for report in reports:
            summary(report)
        refused = _prune_after(args, db, pruned)
        return 1 if refused or any(report.deferred for report in reports) else 0

    with FashionClient(args.url[0], config=connection) as client:
        indexer = Indexer(db, client, max_in_flight=args.max_in_flight, progress=progress)
        if args.watch:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            print(f"watching {', '.join(map(str, args.folders))} (Ctrl-C stops)", file=sys.stderr, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                indexer.watch(args.folders, poll_s=args.poll_s, stop=stop.is_set, on_report=summary,
                              prune=args.prune, on_prune=pruned)
            return 0
        deferred = 0
        for folder in args.folders:
            report = indexer.index_folder(folder, bulk=args.bulk)
            summary(report)
            deferred += report.deferred
    refused = _prune_after(args, db, pruned)
    return 1 if deferred or refused else 0


def _prune_after(args: argparse.Namespace, db: Any, show: Any) -> bool:
    """``index --prune``: prune the run's folders (never forced); whether a folder was refused."""
    if not args.prune:
        return False
    from .prune import prune

    report = prune(db, args.folders)
    show(report)
    return bool(report.refused)


def _prune(args: argparse.Namespace) -> int:
    from .errors import CatalogError
    from .prune import prune, prune_lines

    db = _open(args)
    report = prune(db, args.folders or None, dry_run=args.dry_run, force=args.force)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for line in prune_lines(report, shown=_ERRORS_SHOWN):
            print(line, file=sys.stderr)
        verb = "would be removed (dry run)" if report.dry_run else "removed"
        removable = sum(len(f.missing) for f in report.folders if f.refused is None)
        print(f"{report.missing} of {sum(f.indexed for f in report.folders)} images gone, "
              f"{removable if report.dry_run else report.removed} {verb}, "
              f"{len(report.refused)} folder{'s' if len(report.refused) != 1 else ''} refused "
              f"in {report.elapsed_s:.1f} s ({db.describe()})", file=sys.stderr)
    empty = [f.folder for f in report.folders if f.indexed == 0]
    if args.folders and empty:  # a mistyped folder: say so rather than report nothing gone
        raise CatalogError(f"no image in the catalog is under {', '.join(empty)}")
    return 1 if report.refused else 0


def _info(args: argparse.Namespace) -> int:
    from .summary import summarize

    summary = summarize(_open(args))
    print(json.dumps(summary.to_dict(), ensure_ascii=False) if args.json else "\n".join(summary.lines()))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_board
    from .queries import Catalog

    report = export_board(Catalog(_open(args)), args.board, args.folder)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(f"{len(report.written)} photos of board {args.board!r} copied into {args.folder}"
              + (f"; {len(report.missing)} not there (fashionbox catalog prune removes them):" if report.missing
                 else ""), file=sys.stderr)
        for path in report.missing[:_ERRORS_SHOWN]:
            print(f"  {path}", file=sys.stderr)
    return 0


def _filter(args: argparse.Namespace) -> Any:
    from .queries import SearchFilter, parse_attribute

    return SearchFilter(category=args.category, attributes=tuple(parse_attribute(a) for a in args.attribute),
                        min_score=args.min_score, board=args.board, label=args.label)


def _search(args: argparse.Namespace) -> int:
    from .queries import Catalog

    query = _filter(args)
    catalog = Catalog(_open(args))
    if args.text is not None:
        from .queries import embed_words

        vector, model = embed_words(args.url, args.text, connection=connection_from_arguments(args))
        hits = catalog.search_text(vector, model=model, query=query, limit=args.limit)
        return _print_hits(hits, args.json, "similarity")
    return _print_hits(catalog.search(query, limit=args.limit), args.json, "score")


def _print_hits(hits: list[Any], as_json: bool, rank_key: str) -> int:
    if as_json:
        print(json.dumps([row for hit in hits for row in hit.rows(rank_key=rank_key)], ensure_ascii=False))
        return 0
    for hit in hits:
        print(f"{hit.score:.3f}  {hit.image}")
        for g in hit.garments:
            attrs = ", ".join(f"{k}={v['label']}" for k, v in g.attributes.items())
            print(f"    {g.rank:.3f} {g.category} [{', '.join(f'{c:.0f}' for c in g.box)}] {attrs}")
    if not hits:
        print("no matching garments", file=sys.stderr)
    return 0


def _similar(args: argparse.Namespace) -> int:
    from fashionbox.client import FashionBoxError, FashionClient

    from .queries import Catalog

    if not args.image.is_file():
        raise FileNotFoundError(f"no such photo: {args.image}")
    catalog = Catalog(_open(args))
    query = _filter(args)
    with FashionClient(args.url, config=connection_from_arguments(args)) as client:
        try:
            start = catalog.query_garment(args.image, garment=args.garment, client=client)
        except FashionBoxError as exc:
            print(f"error: the photo is not in the catalog and the server at {args.url} could not detect in it: "
                  f"{exc}", file=sys.stderr)
            return 2
    hits = catalog.similar(start.vector, model=start.model, query=query, limit=args.limit,
                           exclude_images=catalog.same_photo(start.image_id), ef_search=args.ef_search)
    if not args.json:
        where = "indexed" if start.image_id is not None else "sent through the server"
        print(f"garment {start.number} ({start.category}) of {args.image} ({where}), model {start.model}",
              file=sys.stderr)
    return _print_hits(hits, args.json, "similarity")


def _duplicates(args: argparse.Namespace) -> int:
    from .queries import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_COSINE, Catalog

    distance = DEFAULT_MAX_DISTANCE if args.max_distance is None else args.max_distance
    cosine = DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine
    groups = Catalog(_open(args)).duplicates(kind=args.kind, max_distance=distance, board=args.board,
                                             min_cosine=cosine)
    if args.json:
        print(json.dumps(groups, ensure_ascii=False))
        return 0
    for number, group in enumerate(groups, 1):
        print(f"group {number} ({len(group)} images)")
        for path in group:
            print(f"    {path}")
    if not groups:
        print("no duplicates", file=sys.stderr)
    return 0


def _web(args: argparse.Namespace) -> int:
    import uvicorn

    from .web import WebSettings, create_app
    from .webguard import allowed_hosts

    hosts = allowed_hosts(args.host, args.allowed_host)
    if hosts is None and "*" not in args.allowed_host:
        print(f"warning: bound to every interface ({args.host}) with no --allowed-host: the page answers under "
              "any name, DNS rebinding included; --allowed-host NAME lists the names it is reached by",
              file=sys.stderr)
    connection = connection_from_arguments(args)
    settings = WebSettings(url=args.url, allowed_hosts=hosts, connection=connection) \
        if args.max_upload_mb is None else WebSettings(url=args.url, allowed_hosts=hosts, connection=connection,
                                                       max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    app = create_app(_open(args), settings)
    print(f"catalog web page on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
