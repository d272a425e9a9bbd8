"""The page's HTML: one server-rendered document, inline CSS, no script and no outside resource, so
it works on a clinic network with no internet. Every value from a model, a file or a request is
escaped."""
from __future__ import annotations

from html import escape
from typing import Any

CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;max-width:72em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
.box{border:1px solid #ccc;border-radius:6px;padding:.6em .9em;margin:.4em 0}
.ok{background:#eef8ee}.warn{background:#fff6e0}.bad{background:#fde8e8}.off{background:#f2f2f2}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:.35em;vertical-align:top;text-align:left}
.bar{background:#e6e6e6;width:14em;height:.9em;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#3b7dd8} .act-refuse .bar span{background:#aaa} .p{display:inline-block;width:13em}
.answer{color:#1d6b1d;font-weight:600}.refer{color:#9a6700;font-weight:600}.refuse{color:#b42318;font-weight:600}
img.thumb{width:96px;image-rendering:auto;background:#000}
.small{color:#666;font-size:.85em}
"""


def _model_box(m: dict[str, Any], selftest: str) -> str:
    if m.get("refused"):
        return f'<div class="box bad" id="model"><b>Model {escape(m["name"])} refused:</b> {escape(m["refused"])}</div>'
    sig = m["signature"]
    cls = "ok" if sig.startswith("signed") else "warn"
    return (f'<div class="box {cls}" id="model"><b>Model</b> <span id="model-name">{escape(m["name"])}</span>: '
            f'{escape(m["arch"])} {escape(m["format"])} {escape(m["precision"])}, runtime {escape(m["runtime"])}<br>'
            f'classes: {escape(", ".join(m["classes"]))}<br><span class="small">{escape(m["decision"])}</span><br>'
            f'signature: <b id="signature">{escape(sig)}</b><br><span id="selftest">{escape(selftest)}</span></div>')


def _drift_box(d: dict[str, Any]) -> str:
    cls = {"GO": "ok", "NO-GO": "bad", "filling": "off", "off": "off"}.get(d.get("state", "off"), "off")
    return f'<div class="box {cls}" id="drift"><b>Drift watch ({escape(str(d.get("state")))})</b>: {escape(d.get("line", ""))}</div>'


def _bars(probs: dict[str, float], refused: bool) -> str:
    if not probs:
        return '<span class="small">no probabilities (refused before the model)</span>'
    rows = ['<div class="small">the model\'s output, not used: no prediction is given</div>'] if refused else []
    for k, v in sorted(probs.items(), key=lambda kv: -kv[1]):
        rows.append(f'<div><span class="p">{escape(k)} {v:.1%}</span><span class="bar"><span style="width:{max(0.0, min(v, 1.0)) * 100:.1f}%">'
                    f"</span></span></div>")
    return "".join(rows)


def _row(d: dict[str, Any], highlight: bool) -> str:
    thumb = f'<img class="thumb" alt="" src="{escape(d["thumb"])}">' if d.get("thumb") else '<span class="small">no image</span>'
    act = escape(d["action"])
    mark = ' id="last-result"' if highlight else ""
    return (f'<tr class="decision act-{act}"{mark} data-action="{act}" data-source="{escape(d["source"])}"><td>{thumb}</td>'
            f'<td><span class="verdict {act}">{act}</span><br><span class="reason">{escape(d["reason"])}</span><br>'
            f'<span class="small">{escape(d["source"])} ({escape(d["origin"])})</span></td><td>{_bars(d["probabilities"], d["action"] == "refuse")}</td>'
            f'<td class="small">{escape(d["time"])}</td></tr>')


def page(model: dict[str, Any], selftest: str, drift: dict[str, Any], decisions: list[dict[str, Any]], message: str = "",
         message_class: str = "warn", highlight: str | None = None, limit_mb: float = 0.0) -> str:
    rows = "".join(_row(d, d["id"] == highlight) for d in decisions) or '<tr><td colspan="4" class="small">no decisions yet</td></tr>'
    note = f'<div class="box {message_class}" id="message">{escape(message)}</div>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecxr on this device</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>edgecxr: chest X-ray classifier on this device</h1>
<p class="small">For research and software testing only; every result is a suggestion for a radiologist, not a diagnosis.</p>
{_model_box(model, selftest)}{_drift_box(drift)}{note}
<h2>Classify one image</h2>
<form class="box" method="post" action="/classify" enctype="multipart/form-data">
<input type="file" name="image" accept=".png,.jpg,.jpeg,.bmp,.dcm" required> <button type="submit">Classify</button>
<span class="small">PNG, JPEG, BMP or DICOM, at most {limit_mb:g} MB</span></form>
<h2>Last decisions</h2>
<table id="decisions"><tr><th>image</th><th>verdict and reason</th><th>calibrated probabilities</th><th>time</th></tr>{rows}</table>
</body></html>"""


def error_page(status: int, message: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status}</title><style>{CSS}</style></head>'
            f'<body><div class="box bad" id="message">{status}: {escape(message)}</div><p><a href="/">back</a></p></body></html>')
