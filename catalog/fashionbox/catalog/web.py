"""The catalog's web page: browse and filter, upload a photo, boards, duplicates; server-rendered HTML.

Usage::

    app = create_app(Database.open(catalog=Path("artifacts/catalog")), WebSettings(url="127.0.0.1:8001"))
    uvicorn.run(app, host="127.0.0.1", port=8080)       # what `fashionbox catalog web` does

A Starlette app, HTML written here (every value escaped), no script at all: forms and links only,
so there is no build step and nothing from a CDN. One CSS grid, so it reads on a phone-sized screen.

Safe by default: ``fashionbox catalog web`` binds loopback and answers only the names it is served
under, and refuses a request from another site that would change something
(:mod:`fashionbox.catalog.webguard`: DNS rebinding, cross-site forms); an upload larger than
``max_upload_bytes`` is refused with 413 before it is read, one that is not a JPEG, PNG or WebP
with 415; ``/file/{id}`` serves only files of indexed images that lie, after resolving links,
inside a root the catalog indexed. Uploads go to the server at ``url`` for detection, wait in
``UPLOADS/.pending`` (a hidden folder, never indexed), and are indexed at once when saved.

Routes: ``/`` (browse; ``?category=&attribute=GROUP=LABEL&board=&label=``, and ``&text=words`` ranked by
the words through the server's text tower, whose box the page shows where the server has one), ``/image/{id}``,
``/image/{id}/drawn.png``, ``/file/{id}``, ``/similar/{garment_id}`` (garments like one, across the
catalog, grouped by image; the image page links each garment there), ``/upload`` (GET form, POST
photo), ``/upload/save``, ``/boards`` (GET list, POST create), ``/boards/add``, ``/boards/remove`` (an
image off a board), ``/boards/delete`` (a board; its images stay), ``/boards/download?name=`` (a board's
photos as a zip), ``/duplicates``, and
JSON at ``/api/search`` (``?text=`` ranks by words through the server's text tower),
``/api/similar`` (GET ``?garment_id=``, or POST a photo with ``garment``) and ``/api/duplicates``
(the same rows as ``fashionbox catalog search|similar|duplicates --json``).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fashionbox.client import (
    AttributeScore,
    BoundingBox,
    ClientConfig,
    Detection,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    MaskRLE,
)

from .database import Database
from .errors import CatalogError, QueryError, UploadRejected
from .export import write_board_zip
from .indexer import IMAGE_SUFFIXES, Indexer
from .queries import (
    DEFAULT_LIMIT,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_COSINE,
    Catalog,
    ImageHit,
    SearchFilter,
    embed_words,
    parse_attribute,
)
from .webguard import LOOPBACK_NAMES, WebGuard

logger = logging.getLogger(__name__)

UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
"""Pillow format -> the suffix a saved upload gets."""

PAGE_SIZE = 48
_FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart headers and the other fields around an upload of the largest size."""
_BODY_LIMIT_FACTOR = 4
_TOKEN = re.compile(r"^[0-9a-f]{64}$")
TEXT_TOWER_TTL_S = 30.0
"""How long the page trusts its last answer to "does the server have a text tower" (the words box)."""
TEXT_TOWER_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class WebSettings:
    url: str = "127.0.0.1:8001"
    """The server's gRPC HOST:PORT, for uploads."""
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_pixels: int = 50_000_000
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES
    """The ``Host`` names answered (:func:`fashionbox.catalog.webguard.allowed_hosts`; ``None``: any)."""
    connection: ClientConfig | None = None
    """The rest of the connection to the server at ``url``: TLS, headers (:mod:`fashionbox.client.connection`)."""

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_upload_pixels < 1:
            raise ValueError("upload limits must be positive")


_CSS = """
*{box-sizing:border-box}body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa;
overflow-wrap:anywhere}
header{background:#222;color:#fff;padding:.5rem .8rem;display:flex;flex-wrap:wrap;gap:.8rem;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:.8rem;max-width:1200px;margin:auto}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:.8rem}
form.filters label{display:flex;flex-direction:column;font-size:.8rem;min-width:0;max-width:100%}
select,input,button{font-size:1rem;padding:.3rem;max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.card a{color:inherit;text-decoration:none}
.card img{width:100%;height:150px;object-fit:cover;display:block}.card p{margin:.3rem;font-size:.8rem}
img.full{max-width:100%;height:auto}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;
padding:.3rem;text-align:left;font-size:.85rem}.error{background:#fee;border:1px solid #c00;padding:.6rem}
.group{margin-bottom:1rem}.query{display:flex;gap:.6rem;align-items:center;margin-bottom:.8rem}
.query img{width:120px;height:120px;object-fit:cover}
form.inline{display:inline}button.remove,button.delete{font-size:.8rem;padding:.1rem .4rem}a.download{font-size:.8rem}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)} · FashionBox catalog</title>
<style>{_CSS}</style></head><body><header><a href="/">Catalog</a><a href="/upload">Upload</a>
<a href="/boards">Boards</a><a href="/duplicates">Duplicates</a></header><main><h1>{_e(title)}</h1>{body}</main>
</body></html>""", status_code=status)


def _error(message: str, status: int) -> HTMLResponse:
    return _page("Error", f'<p class="error" id="error">{_e(message)}</p>', status=status)


def _options(values: list[str] | tuple[str, ...], selected: str | None, empty: str) -> str:
    """``<option>``s; a ``GROUP=LABEL`` value shows as its label only (the select is labelled with the group)."""
    out = [f'<option value="">{_e(empty)}</option>']
    for value in values:
        mark = " selected" if value == selected else ""
        out.append(f'<option value="{_e(value)}"{mark}>{_e(value.partition("=")[2] or value)}</option>')
    return "".join(out)


def _cards(hits: list[ImageHit]) -> str:
    if not hits:
        return '<p id="empty">No images match.</p>'
    cards = []
    for hit in hits:
        garments = ", ".join(sorted({g.category for g in hit.garments}))
        cards.append(f'<div class="card" data-image="{_e(hit.image)}"><a href="/image/{hit.image_id}">'
                     f'<img src="/file/{hit.image_id}" alt="{_e(Path(hit.image).name)}" loading="lazy">'
                     f'<p>{_e(Path(hit.image).name)}<br>{_e(garments)}</p></a></div>')
    return f'<div class="grid" id="results">{"".join(cards)}</div>'


def stored_detections(record: Any) -> ImageDetections:
    """An :class:`ImageRecord`'s garments as the client's result type, to draw with the client's drawing."""
    detections = []
    for garment, mask in zip(record.garments, record.masks, strict=True):
        rle = None
        if mask is not None:
            height, width = mask["size"]
            rle = MaskRLE(int(width), int(height), tuple(mask["counts"]))
        detections.append(Detection(
            box=BoundingBox(*garment.box), category=garment.category, score=garment.score,
            attributes={g: AttributeScore(str(a["label"]), float(a["score"])) for g, a in garment.attributes.items()},
            mask_rle=rle))
    return ImageDetections(width=record.width or 0, height=record.height or 0, detections=tuple(detections))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class CatalogApp:
    """The request handlers, over one database, one client (created on first upload) and the settings."""

    def __init__(self, db: Database, settings: WebSettings) -> None:
        self.db = db
        self.catalog = Catalog(db)
        self.settings = settings
        self._client: FashionClient | None = None
        self._text_tower: tuple[float, str | None] | None = None

    def client(self) -> FashionClient:
        if self._client is None:
            self._client = FashionClient(self.settings.url, config=self.settings.connection)
        return self._client

    def text_tower(self) -> str | None:
        """The model whose space the server's text tower embeds words in, or ``None`` (no text tower, or no
        server): asked again after :data:`TEXT_TOWER_TTL_S`, so that the page offers a words search exactly
        where one can answer without asking on every page."""
        now = time.monotonic()
        if self._text_tower is None or now - self._text_tower[0] > TEXT_TOWER_TTL_S:
            try:
                name: str | None = self.client().text_model(timeout_s=TEXT_TOWER_TIMEOUT_S)
            except FashionBoxError:
                name = None
            self._text_tower = (now, name)
        return self._text_tower[1]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- browse ----------------------------------------------------------------------------------------

    def _filter(self, request: Request) -> SearchFilter:
        params = request.query_params
        attributes = tuple(parse_attribute(a) for a in params.getlist("attribute") if a.strip())
        board = params.get("board") or None
        return SearchFilter(category=params.get("category") or None, attributes=attributes, board=board,
                            label=params.get("label") or None)

    def browse(self, request: Request) -> Response:
        try:
            query = self._filter(request)
            page = max(0, int(request.query_params.get("page", "0") or 0))
        except (QueryError, ValueError) as exc:
            return _error(str(exc), 400)
        words = request.query_params.get("text", "").strip()
        facets = self.catalog.facets(query.board)
        problem = None
        if words:  # ranked by the words' similarity, through the server's text tower: one page
            try:
                vector, model = embed_words(self.settings.url, words, client=self.client())
                hits = self.catalog.search_text(vector, model=model, query=query, limit=PAGE_SIZE)
            except QueryError as exc:
                hits, problem = [], str(exc)
        else:
            hits = self.catalog.browse(query, limit=PAGE_SIZE, offset=page * PAGE_SIZE)
        chosen = dict(query.attributes)
        selects = [f'<label>words<input name="text" id="text" value="{_e(words)}" maxlength="500" '
                   'placeholder="red floral dress"></label>'] if words or self.text_tower() else []
        selects.append(f'<label>category<select name="category" id="category">'
                       f'{_options(facets.categories, query.category, "any")}</select></label>')
        image_labels = self.catalog.labels()
        if image_labels:
            selects.append(f'<label>photo label<select name="label" id="label">'
                           f'{_options(image_labels, query.label, "any")}</select></label>')
        for group, labels in facets.attributes.items():
            values = [f"{group}={label}" for label in labels]
            current = f"{group}={chosen[group]}" if group in chosen else None
            selects.append(f'<label>{_e(group)}<select name="attribute" data-group="{_e(group)}">'
                           f'{_options(values, current, "any")}</select></label>')
        board_input = f'<input type="hidden" name="board" value="{_e(query.board)}">' if query.board else ""
        title = f"Board: {query.board}" if query.board else "Catalog"
        more = ""
        if len(hits) == PAGE_SIZE and not words:
            args = [("category", query.category or "")] + [("attribute", f"{g}={v}") for g, v in query.attributes]
            args += [("label", query.label)] if query.label else []
            args += [("board", query.board)] if query.board else []
            more = f'<p><a id="more" href="/?{_e(urlencode([*args, ("page", str(page + 1))]))}">More</a></p>'
        body = (f'<p>{facets.images} images, {facets.garments} garments'
                + (f', <a href="/failed">{facets.failed} failed</a>' if facets.failed else "") + "</p>"
                f'<form class="filters" method="get" action="/" id="filters">{"".join(selects)}{board_input}'
                f'<button type="submit" id="apply">Filter</button></form>'
                + (f'<p class="error" id="error">{_e(problem)}</p>' if problem else _cards(hits) + more))
        return _page(title, body, status=400 if problem else 200)

    def failed(self, request: Request) -> Response:
        rows = "".join(f"<tr><td>{_e(p)}</td><td>{_e(m)}</td></tr>" for p, m in self.catalog.failed())
        return _page("Failed images", f"<table><tr><th>image</th><th>error</th></tr>{rows}</table>")

    # -- one image ---------------------------------------------------------------------------------------

    def image(self, request: Request) -> Response:
        record = self.catalog.image(int(request.path_params["image_id"]))
        if record is None:
            return _error("no such image", 404)
        rows = []
        for number, g in enumerate(record.garments, 1):
            attrs = "<br>".join(f"{_e(k)}: {_e(v['label'])} ({float(v['score']):.2f})" for k, v in g.attributes.items())
            query = urlencode([("category", g.category)])
            rows.append(f'<tr><td>{number}</td><td><a href="/?{_e(query)}">{_e(g.category)}</a></td>'
                        f"<td>{g.score:.2f}</td><td>{attrs}</td>"
                        f'<td><a class="similar" id="similar-{number}" href="/similar/{g.garment_id}">similar</a>'
                        f"</td></tr>")
        boards = "".join(
            f'<li><a href="/?{_e(urlencode([("board", b)]))}">{_e(b)}</a> <form method="post" action="/boards/remove" '
            f'class="inline"><input type="hidden" name="image_id" value="{record.image_id}"><input type="hidden" '
            f'name="board" value="{_e(b)}"><button type="submit" class="remove" id="remove-{number}">remove</button>'
            f"</form></li>" for number, b in enumerate(record.boards, 1))
        known = "".join(f'<option value="{_e(name)}">' for name, _ in self.catalog.boards())
        labels = ", ".join(f'<a href="/?{_e(urlencode([("label", label)]))}">{_e(label)}</a> ({score:.2f})'
                           for label, score in record.labels)
        body = (f'<p>{_e(record.image)}</p>'
                + (f'<p id="labels">Photo labels: {labels}</p>' if labels else "")
                + (f'<p class="error">{_e(record.error)}</p>' if record.status == "failed" else
                   '<p class="error" id="gone">The file is not there any more (moved or deleted) or not in an indexed '
                   'folder: <code>fashionbox catalog prune</code> removes what is gone.</p>'
                   if self._servable(record.image) is None else
                   f'<img class="full" id="drawn" src="/image/{record.image_id}/drawn.png" alt="detections">')
                + f'<table id="garments"><tr><th>#</th><th>category</th><th>score</th><th>attributes</th>'
                f'<th></th></tr>'
                f'{"".join(rows)}</table><p>Boards:</p><ul id="boards">{boards or "<li>none</li>"}</ul>'
                f'<form method="post" action="/boards/add" id="add-to-board">'
                f'<input type="hidden" name="image_id" value="{record.image_id}">'
                f'<label>Add to board <input name="board" id="board-name" list="known-boards" required '
                f'maxlength="200"></label><datalist id="known-boards">{known}</datalist>'
                f'<button type="submit" id="add">Add</button></form>')
        return _page(Path(record.image).name, body)

    def similar(self, request: Request) -> Response:
        """Garments like garment ``garment_id`` across the catalog, grouped by image (filters as on ``/``)."""
        garment_id = int(request.path_params["garment_id"])
        try:
            query = self._filter(request)
            start = self.catalog.garment_embedding(garment_id)
            hits = self.catalog.similar(start.vector, model=start.model, query=query, limit=PAGE_SIZE // 2,
                                        exclude_images=self.catalog.same_photo(start.image_id))
        except (QueryError, ValueError) as exc:
            return _error(str(exc), 400 if "no garment" not in str(exc) else 404)
        x1, y1, x2, y2 = start.box
        head = (f'<div class="query" id="query"><a href="/image/{start.image_id}"><img src="/image/{start.image_id}'
                f'/drawn.png" alt="query photo"></a><p>Garment {start.number} ({_e(start.category)}), box '
                f'[{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]<br><a id="same-category" href="/similar/{garment_id}?'
                f'{_e(urlencode([("category", start.category)]))}">only {_e(start.category)}</a></p></div>')
        groups = []
        for hit in hits:
            garments = "<br>".join(f"{_e(g.category)} {g.rank:.3f}" for g in hit.garments)
            groups.append(f'<div class="card" data-image="{_e(hit.image)}" data-similarity="{hit.score:.4f}">'
                          f'<a href="/image/{hit.image_id}"><img src="/file/{hit.image_id}" '
                          f'alt="{_e(Path(hit.image).name)}" loading="lazy"><p>{_e(Path(hit.image).name)}<br>'
                          f"{garments}</p></a></div>")
        body = head + (f'<div class="grid" id="results">{"".join(groups)}</div>' if groups
                       else '<p id="empty">No similar garments.</p>')
        return _page(f"Similar to garment {start.number}", body)

    def drawn(self, request: Request) -> Response:
        record = self.catalog.image(int(request.path_params["image_id"]))
        path = self._servable(record.image) if record is not None else None
        if record is None or path is None or record.status != "indexed":
            return Response("not found", status_code=404)
        picture = stored_detections(record).draw(path)
        return Response(_png(picture), media_type="image/png")

    def file(self, request: Request) -> Response:
        record = self.catalog.image(int(request.path_params["image_id"]))
        path = self._servable(record.image) if record is not None else None
        if path is None:
            return Response("not found", status_code=404)
        return FileResponse(path)

    def _servable(self, stored: str) -> Path | None:
        """The file of an indexed image, if it is an image file inside an indexed root (links resolved)."""
        try:
            path = Path(stored).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            return None
        for root in self.catalog.roots():
            try:
                if path.is_relative_to(Path(root).resolve()):
                    return path
            except OSError:
                continue
        return None

    # -- uploads ---------------------------------------------------------------------------------------

    def upload_form(self, request: Request) -> Response:
        limit_mb = self.settings.max_upload_bytes / (1024 * 1024)
        return _page("Upload a photo", f'<form method="post" action="/upload" enctype="multipart/form-data" '
                     f'id="upload"><input type="file" name="photo" id="photo" accept="image/jpeg,image/png,image/webp" '
                     f'required> <button type="submit" id="send">Detect</button></form>'
                     f'<p>JPEG, PNG or WebP, up to {limit_mb:g} MB.</p>')

    async def upload(self, request: Request) -> Response:
        try:
            data = await self._read_upload(request)
            extension = self._check_image(data)
        except UploadRejected as exc:
            return _error(str(exc), exc.status)
        token = _sha256(data)
        pending = self.db.uploads / ".pending"
        pending.mkdir(parents=True, exist_ok=True)
        (pending / f"{token}{extension}").write_bytes(data)
        try:
            result = await run_in_threadpool(self.client().detect, data)
        except FashionBoxError as exc:
            return _error(f"the server could not detect in this photo: {exc}", 502)
        picture = await run_in_threadpool(result.draw, data)
        rows = "".join(f"<tr><td>{_e(d.category)}</td><td>{d.score:.2f}</td><td>"
                       + "<br>".join(f"{_e(g)}: {_e(a.label)}" for g, a in d.attributes.items())
                       + "</td></tr>" for d in result.detections)
        encoded = base64.b64encode(_png(picture)).decode("ascii")
        body = (f'<img class="full" id="drawn" src="data:image/png;base64,{encoded}" alt="detections">'
                f'<table id="garments"><tr><th>category</th><th>score</th><th>attributes</th></tr>{rows}</table>'
                f'<form method="post" action="/upload/save" id="save"><input type="hidden" name="token" '
                f'value="{token}"><button type="submit" id="save-button">Save into the collection</button></form>')
        return _page(f"{len(result.detections)} garments found", body)

    async def save_upload(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        token = str(form.get("token", ""))
        if not _TOKEN.match(token):
            return _error("that upload is unknown", 400)
        pending = self.db.uploads / ".pending"
        matches = [p for p in pending.glob(f"{token}.*") if p.suffix in UPLOAD_FORMATS.values()] \
            if pending.is_dir() else []
        if not matches:
            return _error("that upload is unknown or already saved", 404)
        target = self.db.uploads / matches[0].name
        shutil.move(str(matches[0]), target)
        indexer = Indexer(self.db, self.client(), max_in_flight=1)
        await run_in_threadpool(indexer.index_files, [target.resolve()], root=self.db.uploads.resolve())
        image_id = self.catalog.image_id_of(str(target.resolve()))
        if image_id is None:
            return _error("the photo was saved but could not be indexed", 500)
        return RedirectResponse(f"/image/{image_id}", status_code=303)

    async def _read_upload(self, request: Request) -> bytes:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD_BYTES:
            # Read what was sent (the app's body limit caps it) so that the client reads this answer
            # instead of a reset connection.
            async for _ in request.stream():
                pass
            raise UploadRejected(f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB",
                                 status=413)
        form = await request.form(max_files=1, max_fields=4)
        photo = form.get("photo")
        if not isinstance(photo, UploadFile):
            raise UploadRejected("no photo in the form (field 'photo')", status=400)
        data = await photo.read(limit + 1)
        await form.close()
        if len(data) > limit:
            raise UploadRejected(f"the photo is larger than the limit of {limit / 1e6:.1f} MB", status=413)
        if not data:
            raise UploadRejected("the photo is empty", status=400)
        return data

    def _check_image(self, data: bytes) -> str:
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                pixels = image.width * image.height
        except (UnidentifiedImageError, OSError) as exc:
            raise UploadRejected("this file is not an image the catalog takes: upload a JPEG, PNG or WebP photo",
                                 status=415) from exc
        if kind not in UPLOAD_FORMATS:
            raise UploadRejected(f"{kind or 'this'} images are not taken: upload a JPEG, PNG or WebP photo", status=415)
        if pixels > self.settings.max_upload_pixels:
            raise UploadRejected(f"the photo has {pixels} pixels; the limit is {self.settings.max_upload_pixels}",
                                 status=413)
        return UPLOAD_FORMATS[kind]

    # -- boards and duplicates ------------------------------------------------------------------------------

    def boards(self, request: Request) -> Response:
        items = "".join(f'<li><a href="/?{_e(urlencode([("board", name)]))}">{_e(name)}</a> ({count}) '
                        f'<a class="download" id="download-{number}" href="/boards/download?'
                        f'{_e(urlencode([("name", name)]))}">download</a> '
                        f'<form method="post" action="/boards/delete" class="inline"><input type="hidden" name="name" '
                        f'value="{_e(name)}"><button type="submit" class="delete" id="delete-{number}">delete</button>'
                        f"</form></li>" for number, (name, count) in enumerate(self.catalog.boards(), 1))
        body = (f'<form method="post" action="/boards" id="new-board"><label>New board '
                f'<input name="name" id="new-board-name" required maxlength="200"></label> '
                f'<button type="submit" id="create">Create</button></form><ul id="board-list">{items}</ul>')
        return _page("Boards", body)

    def download_board(self, request: Request) -> Response:
        """The board's photos as a zip (only files the page serves: :meth:`_servable`), built in a temporary
        file that is removed once sent."""
        name = request.query_params.get("name", "")
        out = tempfile.NamedTemporaryFile(prefix="fashionbox-board-", suffix=".zip", delete=False)  # noqa: SIM115
        try:
            with out:
                report = write_board_zip(self.catalog, name, out, locate=self._servable)
        except QueryError as exc:
            os.unlink(out.name)
            return _error(str(exc), 404)
        except BaseException:
            os.unlink(out.name)  # a file that could not be read, say: no zip left behind
            raise
        if report.missing:
            logger.info("board %r: %d photos not there, left out of the zip", name, len(report.missing))
        filename = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "board"
        return FileResponse(out.name, media_type="application/zip", filename=f"{filename}.zip",
                            background=BackgroundTask(os.unlink, out.name))

    async def create_board(self, request: Request) -> Response:
        return await self._board_form(request, self.catalog.create_board)

    async def delete_board(self, request: Request) -> Response:
        """Delete a board (its images stay); a board that is not there is not an error (deleted twice)."""
        return await self._board_form(request, self.catalog.delete_board)

    async def add_to_board(self, request: Request) -> Response:
        return await self._image_board_form(request, self.catalog.add_to_board)

    async def remove_from_board(self, request: Request) -> Response:
        return await self._image_board_form(request, self.catalog.remove_from_board)

    async def _board_form(self, request: Request, change: Callable[[str], object]) -> Response:
        """A form naming a board (``name``): ``change(name)``, then back to the boards."""
        form = await request.form(max_files=0, max_fields=4)
        try:
            change(str(form.get("name", "")))
        except QueryError as exc:
            return _error(str(exc), 400)
        return RedirectResponse("/boards", status_code=303)

    async def _image_board_form(self, request: Request, change: Callable[[str, list[int]], int]) -> Response:
        """A form naming an image and a board (``image_id``, ``board``): ``change(board, [image_id])``, then back
        to the image."""
        form = await request.form(max_files=0, max_fields=4)
        try:
            image_id = int(str(form.get("image_id", "")))
            change(str(form.get("board", "")), [image_id])
        except (QueryError, ValueError) as exc:
            return _error(str(exc), 400)
        return RedirectResponse(f"/image/{image_id}", status_code=303)

    def duplicates(self, request: Request) -> Response:
        try:
            distance = int(request.query_params.get("max_distance", DEFAULT_MAX_DISTANCE))
            cosine = float(request.query_params.get("min_cosine", DEFAULT_MIN_COSINE))
            groups = self.catalog.duplicates(max_distance=distance, min_cosine=cosine)
        except (QueryError, ValueError) as exc:
            return _error(str(exc), 400)
        ids = {path: self.catalog.image_id_of(path) for group in groups for path in group}
        parts = []
        for number, group in enumerate(groups, 1):
            cards = "".join(f'<div class="card"><a href="/image/{ids[p]}"><img src="/file/{ids[p]}" alt="">'
                            f"<p>{_e(Path(p).name)}</p></a></div>" for p in group)
            parts.append(f'<div class="group"><h2>Group {number}</h2><div class="grid">{cards}</div></div>')
        body = (f'<form class="filters" method="get"><label>pHash distance (bits)<input type="number" min="0" '
                f'max="64" name="max_distance" value="{distance}"></label><label>garment match (transformed '
                f'copies)<input type="number" min="-1" max="1" step="0.005" name="min_cosine" value="{cosine:g}">'
                f'</label><button type="submit">Find</button></form>'
                + ("".join(parts) or '<p id="empty">No duplicates.</p>'))
        return _page(f"Duplicates: {len(groups)} groups", body)

    # -- JSON ----------------------------------------------------------------------------------------------

    def api_search(self, request: Request) -> Response:
        """Rows as ``fashionbox catalog search --json``; ``?text=words`` ranks by the words (``similarity``)
        through the server's text tower, an error (400) when it has none."""
        try:
            query = self._filter(request)
            limit = int(request.query_params.get("limit", "50"))
            text = request.query_params.get("text")
            if text is not None:
                vector, model = embed_words(self.settings.url, text, client=self.client())
                hits = self.catalog.search_text(vector, model=model, query=query, limit=limit)
                return JSONResponse([row for hit in hits for row in hit.rows(rank_key="similarity")])
            return JSONResponse(self.catalog.search_rows(query, limit=limit))
        except (QueryError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    def api_duplicates(self, request: Request) -> Response:
        try:
            distance = int(request.query_params.get("max_distance", DEFAULT_MAX_DISTANCE))
            cosine = float(request.query_params.get("min_cosine", DEFAULT_MIN_COSINE))
            kind = request.query_params.get("kind", "all")
            return JSONResponse(self.catalog.duplicates(kind=kind, max_distance=distance,  # type: ignore[arg-type]
                                                        min_cosine=cosine))
        except (QueryError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def api_similar(self, request: Request) -> Response:
        """GET ``?garment_id=N`` (an indexed garment) or POST a photo (field ``photo``, optional ``garment``
        numbered from 1; an indexed photo is found by content, a new one goes through the server): JSON rows
        ``image``, ``category``, ``box``, ``attributes``, ``similarity``, grouped by image. Filters as on ``/``."""
        try:
            query = self._filter(request)
            limit = int(request.query_params.get("limit", str(DEFAULT_LIMIT)))
            if request.method == "GET":
                start = self.catalog.garment_embedding(int(request.query_params.get("garment_id", "")))
            else:
                garment_text = request.query_params.get("garment")
                data = await self._read_upload(request)
                self._check_image(data)
                garment = int(garment_text) if garment_text else None
                start = await run_in_threadpool(self.catalog.query_garment, data, garment=garment,
                                                client=self.client())
            hits = self.catalog.similar(start.vector, model=start.model, query=query, limit=limit,
                                        exclude_images=self.catalog.same_photo(start.image_id))
        except UploadRejected as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (QueryError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except FashionBoxError as exc:
            return JSONResponse({"error": f"the server could not detect in this photo: {exc}"}, status_code=502)
        return JSONResponse([row for hit in hits for row in hit.rows(rank_key="similarity")])


def _sha256(data: bytes) -> str:
    from .hashing import sha256_hex

    return sha256_hex(data)


def create_app(db: Database, settings: WebSettings | None = None) -> Starlette:
    """The web page's ASGI app over ``db``."""
    handlers = CatalogApp(db, settings or WebSettings())

    async def on_catalog_error(request: Request, exc: Exception) -> Response:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(str(exc), 500)

    routes = [
        Route("/", handlers.browse),
        Route("/failed", handlers.failed),
        Route("/image/{image_id:int}", handlers.image),
        Route("/image/{image_id:int}/drawn.png", handlers.drawn),
        Route("/similar/{garment_id:int}", handlers.similar),
        Route("/file/{image_id:int}", handlers.file),
        Route("/upload", handlers.upload_form, methods=["GET"]),
        Route("/upload", handlers.upload, methods=["POST"]),
        Route("/upload/save", handlers.save_upload, methods=["POST"]),
        Route("/boards", handlers.boards, methods=["GET"]),
        Route("/boards", handlers.create_board, methods=["POST"]),
        Route("/boards/add", handlers.add_to_board, methods=["POST"]),
        Route("/boards/remove", handlers.remove_from_board, methods=["POST"]),
        Route("/boards/delete", handlers.delete_board, methods=["POST"]),
        Route("/boards/download", handlers.download_board),
        Route("/duplicates", handlers.duplicates),
        Route("/api/search", handlers.api_search),
        Route("/api/similar", handlers.api_similar, methods=["GET", "POST"]),
        Route("/api/duplicates", handlers.api_duplicates),
    ]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            handlers.close()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 413:
            limit = handlers.settings.max_upload_bytes
            return _error(f"the upload is larger than the limit of {limit / 1e6:.1f} MB", 413)
        return _error(str(exc.detail), exc.status_code)

    # A body past this is cut off (413) as it arrives; below it, an upload over the limit is read and
    # refused with a clear page.
    return Starlette(routes=routes, exception_handlers={CatalogError: on_catalog_error, HTTPException: on_http_error},
                     lifespan=lifespan, max_body_size=_BODY_LIMIT_FACTOR * handlers.settings.max_upload_bytes,
                     middleware=[Middleware(WebGuard, hosts=handlers.settings.allowed_hosts)])
