"""make review: a local page over the ranked label-fix candidates of `make relabel`. Each person's 7 crops,
current -> suggested label, the evidence and its confidence; accept, reject, edit or mark unsure (keys a, r, e, u;
z undoes a card's decision; j/k or s move on; p shows the uncropped photos: gender often rests on hair and clothes).
Every decision is saved at once (atomic writes) to models/<exp>/<run-id>/label_fixes_reviewed.csv (the accepted and
edited fixes, in the label-fixes format) and review_decisions.csv (every decision: a restart resumes from it).
The server is the standard library's, bound to 127.0.0.1."""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from ..core import labels
from ..core.cli import label_fixes_override, make_command
from ..core.config import Settings
from ..core.errors import MaskcompError
from ..core.fileio import write_csv
from ..crop.stage import crop_dir
from ..data.label_fixes import FIX_COLUMNS
from ..runs import RunRef, resolve_run

log = logging.getLogger(__name__)

DECISIONS = ("accept", "reject", "edit", "unsure")  # unsure: looked at, left for later, fixes nothing
DECISION_COLUMNS = ["person_id", "fix", "decision", "value", "decided"]
MAX_AGE = 120
IMAGE_ROUTES = {"crop": "crops", "photo": "photos"}  # /crop/<person>/<i>, /photo/<person>/<i>
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_BODY = 64 * 1024  # a decision is a few dozen bytes: a request body is never read past this


@dataclass
class Review:
    """The candidates of one run, the crops of their persons, and the decisions so far (saved at every change)."""

    run: RunRef
    candidates: pd.DataFrame
    crops: dict[str, list[str]]  # person -> crop files in IMAGE_STEMS order
    decisions: pd.DataFrame
    label_fixes: list[str] = field(default_factory=list)  # the fixes the run was trained with (data.label_fixes)
    photos: dict[str, list[str]] = field(default_factory=dict)  # person -> the uncropped images, same order
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def retrain(self) -> str:
        return make_command(
            "folds train infer ensemble", [label_fixes_override(self.label_fixes, self.run.reviewed_fixes)]
        )

    def decide(self, person: str, fix: str, decision: str, value: str | None) -> dict:
        """Record one decision (replacing an earlier one of the same candidate) and save both files."""
        row = self.candidate(person, fix)
        if decision not in DECISIONS:
            raise MaskcompError(f"decision '{decision}' is unknown; use {', '.join(DECISIONS)}")
        chosen = row["value"] if decision == "accept" else checked_value(fix, value) if decision == "edit" else ""
        new = {"person_id": person, "fix": fix, "decision": decision, "value": chosen, "decided": _now()}
        self._save(person, fix, pd.DataFrame([new]))
        return new

    def undo(self, person: str, fix: str) -> dict:
        """Forget a candidate's decision: it is undecided again (and out of the reviewed fixes)."""
        self.candidate(person, fix)
        self._save(person, fix, pd.DataFrame(columns=DECISION_COLUMNS))
        return {"person_id": person, "fix": fix, "decision": "", "value": ""}

    def _save(self, person: str, fix: str, new: pd.DataFrame) -> None:
        """Replace the candidate's decision rows with `new` and write both files."""
        with self.lock:
            kept = self.decisions[~((self.decisions["person_id"] == person) & (self.decisions["fix"] == fix))]
            self.decisions = pd.concat([kept, new], ignore_index=True) if len(new) else kept.reset_index(drop=True)
            write_csv(self.decisions, self.run.review_decisions)
            write_csv(self.fixes(), self.run.reviewed_fixes)

    def candidate(self, person: str, fix: str) -> pd.Series:
        found = self.candidates[(self.candidates["person_id"] == person) & (self.candidates["fix"] == fix)]
        if found.empty:
            raise MaskcompError(f"person {person!r} has no '{fix}' candidate in {self.run.fix_candidates}")
        return found.iloc[0]

    def fixes(self) -> pd.DataFrame:
        """Accepted and edited decisions as label-fixes rows (swaps carry no value)."""
        kept = self.decisions[self.decisions["decision"].isin(["accept", "edit"])]
        rows = [
            {
                "person_id": d.person_id,
                "fix": d.fix,
                "value": "" if d.fix == "swap_incorrect_normal" else d.value,
                "note": f"make review: {d.decision}ed {d.decided}",
            }  # fmt: skip
            for d in kept.itertuples()
        ]
        return pd.DataFrame(rows, columns=list(FIX_COLUMNS))


def checked_value(fix: str, value: str | None) -> str:
    """An edited value, or one line saying what the fix takes."""
    text = str(value if value is not None else "").strip()
    if fix == "gender" and text in ("male", "female"):
        return text
    if fix == "age" and re.fullmatch(r"[0-9]{1,3}", text) and int(text) <= MAX_AGE:  # ASCII digits: not '²'
        return str(int(text))
    if fix == "swap_incorrect_normal":
        raise MaskcompError("a swap has no value to edit; accept or reject it")
    want = "male or female" if fix == "gender" else f"a whole number of years, 0 to {MAX_AGE}"
    noun = "a gender" if fix == "gender" else "an age"
    raise MaskcompError(f"'{text}' is not {noun}; give {want}")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def load_review(cfg: Settings) -> Review:
    run = resolve_run(cfg.paths.resolved, cfg.experiment, cfg.run)
    if not run.fix_candidates.exists():
        raise MaskcompError(f"{run.fix_candidates}: no candidates yet; run `make relabel` first")
    candidates = pd.read_csv(run.fix_candidates, dtype=str, keep_default_na=False)
    decisions = (
        pd.read_csv(run.review_decisions, dtype=str, keep_default_na=False)
        if run.review_decisions.exists()
        else pd.DataFrame(columns=DECISION_COLUMNS)
    )
    crops, photos = person_images(cfg, set(candidates["person_id"]))
    return Review(run, candidates, crops, decisions, list(cfg.data.label_fixes), photos=photos)


def person_images(cfg: Settings, persons: set[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each person's crops and uncropped images (under the current data root), in IMAGE_STEMS order."""
    records = crop_dir(cfg) / "records.csv"
    if not records.exists():
        raise MaskcompError(f"{records}: no crop records; run `make crop` first")
    df = pd.read_csv(records, dtype={"person_id": str}, keep_default_na=False)
    df = df[(df["split"] == "train") & df["person_id"].isin(persons)]
    df = df.assign(order=[labels.IMAGE_STEMS.index(Path(k).stem) for k in df["key"]]).sort_values("order")
    df = df.assign(photo=[cfg.paths.resolved.image_file(k) for k in df["key"]])
    by_person = df.groupby("person_id")
    return {p: r["crop_path"].tolist() for p, r in by_person}, {p: r["photo"].tolist() for p, r in by_person}


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1250px;margin:16px auto;padding:0 16px;color:#222}"
    ".card{border:2px solid #ddd;border-radius:8px;padding:10px 14px;margin:12px 0}.card.sel{border-color:#2a6df4}"
    ".card.accept{background:#eefbea}.card.reject{background:#f6f6f6}.card.edit{background:#fff7e0}"
    ".crops figure{display:inline-block;margin:0 4px 0 0;text-align:center;font-size:12px;color:#555}"
    ".crops img{height:150px;border-radius:4px;cursor:zoom-in}.crops img.zoom{height:420px;cursor:zoom-out}"
    ".fix{font-size:18px;font-weight:600}.bar{position:sticky;top:0;background:#fff;padding:6px 0;z-index:1}"
    ".hidden{display:none}"
    ".meta{color:#555;font-size:14px}button{font-size:15px;margin-right:6px;padding:4px 12px}"
    "#msg{font-size:15px}.err{color:#b00020}p.meta{line-height:1.9}"
    "kbd{border:1px solid #aaa;border-radius:3px;padding:0 4px;font-size:13px}code{background:#f3f5f7;padding:2px}"
)

SCRIPT = """
const cards=[...document.querySelectorAll('.card')];let sel=0;
const FINAL=['accept','reject','edit'];const final=c=>FINAL.includes(c.dataset.decision);
const shown=k=>!cards[k].classList.contains('hidden');
function pick(i){if(!cards.length)return;sel=Math.max(0,Math.min(cards.length-1,i));
 cards.forEach((c,k)=>c.classList.toggle('sel',k===sel));cards[sel].scrollIntoView({block:'center'});}
function step(d){let k=sel+d;while(k>=0&&k<cards.length&&!shown(k))k+=d;if(k>=0&&k<cards.length)pick(k);}
function progress(){const done=cards.filter(final).length,unsure=cards.filter(c=>c.dataset.decision==='unsure').length;
 document.getElementById('progress').textContent=done+' / '+cards.length+' decided'+(unsure?', '+unsure+' unsure':'');}
function filter(){const kind=document.getElementById('kind').value,open=document.getElementById('open').checked,
 flag=document.getElementById('flag').value;
 cards.forEach(c=>c.classList.toggle('hidden',(kind&&c.dataset.fix!==kind)||(open&&final(c))||
  (flag&&c.dataset.flag!==flag)));if(!shown(sel))step(1);}
document.getElementById('kind').addEventListener('change',filter);
document.getElementById('flag').addEventListener('change',filter);
document.getElementById('open').addEventListener('change',filter);
document.getElementById('jump').addEventListener('keydown',e=>{if(e.key!=='Enter')return;e.preventDefault();
 const k=cards.findIndex(c=>c.dataset.person===e.target.value.trim());
 document.getElementById('msg').textContent=k<0?'no candidate for person '+e.target.value:'';
 if(k>=0){cards[k].classList.remove('hidden');pick(k);}});
document.querySelectorAll('.crops img').forEach(i=>i.addEventListener('click',e=>{e.stopPropagation();
 i.classList.toggle('zoom');}));
function photos(card){const on=!card.classList.contains('uncropped');card.classList.toggle('uncropped',on);
 card.querySelectorAll('.crops img').forEach(i=>{i.src=on?i.dataset.photo:i.dataset.crop;});}
function show(card,d){card.classList.remove(...FINAL,'unsure');if(d.decision)card.classList.add(d.decision);
 card.dataset.decision=d.decision;
 card.querySelector('.state').textContent=d.decision?'saved: '+d.decision+(d.value?' -> '+d.value:''):'';progress();}
async function send(card,path,decision){const value=card.querySelector('input').value;
 const r=await fetch(path,{method:'POST',headers:{'Content-Type':'application/json'},
  body:JSON.stringify({person_id:card.dataset.person,fix:card.dataset.fix,decision:decision,value:value})});
 const d=await r.json();const msg=document.getElementById('msg');
 if(!r.ok){msg.className='err';msg.textContent=d.error;return null;}
 msg.className='';msg.textContent=d.decision?'saved '+d.person_id+' '+d.fix+': '+d.decision:
  'undone '+d.person_id+' '+d.fix+': undecided again';show(card,d);return d;}
async function decide(card,decision){if(!await send(card,'/api/decide',decision))return;
 const next=cards.findIndex((c,k)=>k>sel&&!c.dataset.decision);pick(next<0?sel:next);}
cards.forEach((c,k)=>{c.addEventListener('click',()=>pick(k));
 c.querySelectorAll('button[data-decision]').forEach(b=>b.addEventListener('click',e=>{e.stopPropagation();pick(k);
  decide(c,b.dataset.decision);}));
 c.querySelector('button.undo').addEventListener('click',e=>{e.stopPropagation();pick(k);send(c,'/api/undo','');});
 c.querySelector('button.photos').addEventListener('click',e=>{e.stopPropagation();pick(k);photos(c);});
 c.querySelector('input').addEventListener('keydown',e=>{if(e.key==='Enter'){e.preventDefault();decide(c,'edit');
  e.target.blur();}});});
const KEYS={j:()=>step(1),s:()=>step(1),k:()=>step(-1),a:c=>decide(c,'accept'),r:c=>decide(c,'reject'),
 u:c=>decide(c,'unsure'),z:c=>send(c,'/api/undo',''),p:c=>photos(c)};
document.addEventListener('keydown',e=>{if(['INPUT','SELECT'].includes(e.target.tagName))return;const c=cards[sel];
 if(KEYS[e.key])KEYS[e.key](c);else if(e.key==='e'){e.preventDefault();c.querySelector('input').focus();}});
const firstOpen=cards.findIndex(c=>!c.dataset.decision);pick(firstOpen<0?0:firstOpen);progress();
"""


def _saved(review: Review, person: str, fix: str) -> tuple[str, str]:
    """(decision, text shown) of a candidate's saved decision, or ('', '')."""
    done = review.decisions[(review.decisions["person_id"] == person) & (review.decisions["fix"] == fix)]
    if done.empty:
        return "", ""
    last = done.iloc[-1]
    return last.decision, f"saved: {last.decision}" + (f" -> {last.value}" if last.value else "")


def _editor(row) -> str:
    if row.fix == "swap_incorrect_normal":
        return "<input type=hidden>"
    hint = "male/female" if row.fix == "gender" else "age"
    return (
        f"<input size='8' placeholder='{hint}' value='{html.escape(row.value)}'> "
        "<button data-decision='edit'>edit (e, Enter)</button>"
    )


def card(review: Review, row, index: int) -> str:
    """One candidate: the fix, its evidence, the person's crops, the buttons and the saved decision."""
    decision, state = _saved(review, row.person_id, row.fix)
    person = html.escape(row.person_id)
    crops = "".join(
        f"<figure><img src='/crop/{person}/{i}' data-crop='/crop/{person}/{i}' data-photo='/photo/{person}/{i}' "
        f"loading='lazy' alt='{labels.IMAGE_STEMS[i]}'><figcaption>{labels.IMAGE_STEMS[i]}</figcaption></figure>"
        for i in range(len(review.crops.get(row.person_id, [])))
    )  # loaded as they scroll into view: hundreds of candidates are thousands of crops
    flags = (" · automatic" if row.auto == "True" else "") + (
        " · systematic (the model's failure, not the label's)" if row.systematic == "True" else ""
    )
    return (
        f"<div class='card {decision}' id='c{index}' data-person='{person}' data-fix='{html.escape(row.fix)}' "
        f"data-decision='{decision}' data-flag='{flag_of(row)}'>"
        f"<div class='fix'>#{index + 1} person {person}: {html.escape(row.fix)} {html.escape(row.current)} &rarr; "
        f"{html.escape(row.suggested)}</div><div class='meta'>confidence {float(row.confidence or 0):.2f}{flags} · "
        f"{html.escape(row.note)}</div><div class='crops'>{crops}</div>"
        "<button data-decision='accept'>accept (a)</button><button data-decision='reject'>reject (r)</button>"
        f"{_editor(row)} <button data-decision='unsure'>unsure (u)</button><button class='undo'>undo (z)</button>"
        f"<button class='photos'>uncropped photos (p)</button> <span class='state'>{html.escape(state)}</span></div>"
    )


def flag_of(row) -> str:
    """What the ranking says about a candidate: automatic (confident, of a kind measured precise), systematic (the
    model fails on such persons, the label may be right), or a label suspect."""
    return "automatic" if row.auto == "True" else "systematic" if row.systematic == "True" else "suspect"


FLAGS = (("suspect", "label suspects"), ("systematic", "systematic (the model's failure)"), ("automatic", "automatic"))


def toolbar(review: Review) -> str:
    """Progress, a filter by kind, open-only, and a jump to a person id; stays on top while scrolling."""
    kinds = "".join(f"<option value='{html.escape(k)}'>{html.escape(k)}</option>" for k in
                    sorted(set(review.candidates["fix"])))  # fmt: skip
    present = {flag_of(row) for row in review.candidates.itertuples()}
    flags = "".join(f"<option value='{v}'>{name}</option>" for v, name in FLAGS if v in present)
    return (
        "<div class='bar'><b id='progress'></b> · kind <select id='kind'><option value=''>all</option>"
        f"{kinds}</select> <select id='flag'><option value=''>every candidate</option>{flags}</select> "
        "<label><input type='checkbox' id='open'> undecided only</label> · person "
        "<input id='jump' size='8' placeholder='id, Enter'> · click a photo to zoom<div id='msg'></div></div>"
    )


def counts(review: Review) -> str:
    """How many candidates of each flag, in words."""
    found = pd.Series([flag_of(row) for row in review.candidates.itertuples()]).value_counts()
    return ", ".join(f"{found[v]} {name}" for v, name in FLAGS if v in found) or "none"


def render(review: Review) -> str:
    cards = "".join(card(review, row, i) for i, row in enumerate(review.candidates.itertuples()))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Review: {html.escape(review.run.label)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><h1>Label review: run {html.escape(review.run.label)}</h1>"
        f"<p class='meta'>{len(review.candidates)} candidates ({counts(review)}), most likely first. Keys: "
        "<kbd>j</kbd>/<kbd>k</kbd> next/previous (<kbd>s</kbd> skips), <kbd>a</kbd> accept, <kbd>r</kbd> reject, "
        "<kbd>e</kbd> edit the value (Enter saves), <kbd>u</kbd> unsure (kept for later, fixes nothing), "
        "<kbd>z</kbd> undo, <kbd>p</kbd> the uncropped photos (gender often rests on hair and clothes). Every "
        f"decision is saved at once to <code>{html.escape(str(review.run.reviewed_fixes))}</code>. Then retrain with "
        f"<code>{html.escape(review.retrain)}</code></p>{toolbar(review)}{cards}<script>{SCRIPT}</script>"
        "</body></html>"
    )


class Handler(BaseHTTPRequestHandler):
    review: Review  # set on the class the server is made with

    def log_message(self, fmt: str, *args) -> None:
        log.debug(fmt, *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, render(self.review).encode(), "text/html; charset=utf-8")
        if self.path == "/api/decisions":
            return self._json(HTTPStatus.OK, {"decisions": self.review.decisions.to_dict("records")})
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] in IMAGE_ROUTES and re.fullmatch(r"[0-9]{1,6}", parts[2]):
            files = getattr(self.review, IMAGE_ROUTES[parts[0]]).get(parts[1], [])
            if int(parts[2]) < len(files) and Path(files[int(parts[2])]).is_file():
                file = Path(files[int(parts[2])])
                return self._send(HTTPStatus.OK, file.read_bytes(), IMAGE_TYPES.get(file.suffix.lower(), "image/jpeg"))
        self._json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: not found"})

    def do_POST(self) -> None:
        if self.path not in ("/api/decide", "/api/undo"):
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: not found"})
        length = (self.headers.get("Content-Length") or "0").strip()
        if not re.fullmatch(r"[0-9]{1,12}", length) or int(length) > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot carry another request
            want = f"a whole number of bytes up to {MAX_BODY}"
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length {length[:40]!r}: expected {want}"})
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
            person, fix = str(body.get("person_id", "")), str(body.get("fix", ""))
            saved = (
                self.review.undo(person, fix)
                if self.path == "/api/undo"
                else self.review.decide(person, fix, str(body.get("decision", "")), body.get("value"))
            )
        except (MaskcompError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        self._json(HTTPStatus.OK, saved)


def review_server(cfg: Settings, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The review page's server (not started): port 0 takes a free one."""
    review = load_review(cfg)
    handler = type("ReviewHandler", (Handler,), {"review": review})
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise MaskcompError(f"review: cannot listen on {host}:{port} ({err.strerror}); choose another PORT") from None
