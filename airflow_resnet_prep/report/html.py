"""The page: one self-contained HTML document (inline CSS and SVG, images as ``data:`` URIs, no script).

Everything that comes from the data (file names from archives, synsets, params, source paths) is
untrusted and goes through :func:`esc`; only the markup written here is emitted raw.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from airflow_resnet_prep.report import charts
from airflow_resnet_prep.report.listed import Listed
from airflow_resnet_prep.report.samples import Sample
from airflow_resnet_prep.report.stats import FAR_FRACTION, SPLITS, ClassStats, DataFiles, Histogram, SizeStats
from airflow_resnet_prep.report.thumbs import Thumb

SPLIT_NAMES = {"train": "train", "val": "validation"}
FORMATS = {
    "reference": "TFRecord shards (MLPerf reference TensorFlow ResNet)",
    "nvidia": "MXNet RecordIO (NVIDIA MXNet/DALI ResNet)",
    "webdataset": "WebDataset tar shards (PyTorch: webdataset, timm, DALI)",
}
MAX_TABLE_ROWS = 200
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Page:
    """Everything the page shows, gathered by :func:`airflow_resnet_prep.report.build.write_report`."""

    data_dir: str  # the path or URI (without its connection)
    manifest: dict[str, Any]
    classes: ClassStats
    image_sizes: dict[str, SizeStats]
    image_hist: Histogram
    files: DataFiles
    file_hists: dict[str, Histogram]  # split -> file sizes; empty when there are few files (one bar each)
    samples: list[Sample]
    reencoded: list[Listed]
    skipped: list[Listed]
    problems: list[str]  # what could not be read (catalog, output): shown, not fatal
    reused: str | None = None  # the latest run reused this output: why (manifest.reuse_note)


def esc(value: object) -> str:
    """HTML-escape any value (quotes too: the result may sit in an attribute)."""
    return escape(str(value), quote=True)


def esc_name(name: str) -> str:
    """An escaped file name that may wrap after its underscores (long ImageNet names in narrow cards)."""
    return esc(name).replace("_", "_<wbr>")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; cells are HTML already (callers escape)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _kv(items: dict[str, Any]) -> str:
    """A two-column key/value table; values that are not text are shown as compact JSON."""
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append(f"<tr><th>{esc(key)}</th><td><code>{esc(text)}</code></td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def _section(anchor: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{title}</h2>{lead_html}{body}</section>'


# -- header ------------------------------------------------------------------------------------------
def _header(page: Page) -> str:
    m = page.manifest
    impl = str(m.get("implementation", "?"))
    images = m.get("images", {})
    outputs = m.get("outputs", {})
    total = sum(int(o.get("size", 0)) for o in outputs.values())
    n_skipped, n_reencoded = len(m.get("skipped", [])), len(m.get("reencoded", []))
    if page.problems:
        status, cls = "complete, report incomplete", "warn"
    elif n_skipped:
        status, cls = f"complete, {n_skipped:,} left out", "warn"
    else:
        status, cls = "complete", "ok"
    cards = [
        ("train images", f"{images.get('train', 0):,}"),
        ("validation images", f"{images.get('val', 0):,}"),
        ("classes", f"{len(page.classes.rows):,}"),
        ("output files", f"{len(outputs):,}"),
        ("output size", human_bytes(total)),
        ("re-encoded", f"{n_reencoded:,}"),
        ("left out", f"{n_skipped:,}"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value" data-key="{esc(k)}">{esc(v)}</div><div class="label">{esc(k)}</div></div>'
        for k, v in cards
    )
    return (
        '<header class="top"><div class="kicker">MLPerf ResNet-50 training data &middot; dataset report</div>'
        f'<h1><span class="impl">{esc(impl)}</span> <span class="status {cls}">{esc(status)}</span></h1>'
        f'<p class="sub">{esc(FORMATS.get(impl, impl))}<br><code>{esc(page.data_dir)}</code> &middot; '
        f"manifest written {esc(m.get('written_at', '?'))}</p>"
        f'<div class="cards">{card_html}</div></header>'
    )


def _nav() -> str:
    links = [
        ("classes", "Classes"),
        ("samples", "Samples"),
        ("sizes", "Sizes"),
        ("listed", "Re-encoded &amp; left out"),
        ("checks", "Checks"),
        ("steps", "Steps"),
        ("run", "Params &amp; sources"),
    ]
    return '<nav class="toc">' + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"


# -- sections ----------------------------------------------------------------------------------------
def _classes(page: Page) -> str:
    stats = page.classes
    charts_html = []
    for split in SPLITS:
        total = sum(r.counts[split] for r in stats.rows)
        if not total:
            continue
        charts_html.append(
            f'<figure><figcaption><span class="swatch {split}"></span>{SPLIT_NAMES[split]}: '
            f"{total:,} images, mean {stats.mean[split]:,.1f} per class</figcaption>"
            f"{charts.class_strip(stats.rows, split, stats.mean[split])}</figure>"
        )
    outliers = stats.outliers
    if outliers:
        rows = []
        for r in outliers[:MAX_TABLE_ROWS]:
            cells = [f"<code>{esc(r.synset)}</code>", str(r.label)]
            for split in SPLITS:
                dev = r.far.get(split)
                mark = f' <span class="far">{dev:+.0%}</span>' if dev is not None else ""
                cells.append(f"{r.counts[split]:,}{mark}")
            rows.append(cells)
        more = len(outliers) - MAX_TABLE_ROWS
        table = (
            '<div class="scroll">'
            + _table(["synset", "label", "train", "validation"], rows, "num")
            + "</div>"
        )
        table += f'<p class="muted">and {more:,} more.</p>' if more > 0 else ""
        noun = "class" if len(outliers) == 1 else "classes"
        summary = f'<p><strong class="far">{len(outliers):,} {noun} far from the mean</strong>:</p>{table}'
    else:
        summary = '<p class="good">No class is far from its split\'s mean.</p>'
    lead = (
        f"Bars in label order; hover a bar for its class. <strong>Far from the mean</strong> means more "
        f"than {FAR_FRACTION:.0%} above or below the split's mean number of images per class (the shaded "
        f"band); such classes are drawn in red and listed below."
    )
    return _section("classes", "Images per class", "".join(charts_html) + summary, lead)


def _img(thumb: Thumb, alt: str) -> str:
    """A thumbnail, or the reason there is none in its place."""
    if thumb.uri:
        return f'<img src="{esc(thumb.uri)}" alt="{esc(alt)}" loading="lazy">'
    return f'<div class="noimg">{esc(thumb.error or "no preview")}</div>'


def _sample_cell(s: Sample) -> str:
    img = _img(s.thumb, f"{s.synset} {s.filename}")
    dims = f"{s.thumb.width}&times;{s.thumb.height} &middot; " if s.thumb.uri else ""
    return (
        f'<figure class="thumb" data-split="{esc(s.split)}" data-file="{esc(s.file)}" '
        f'data-position="{s.position}" data-synset="{esc(s.synset)}" data-label="{esc(s.label)}">{img}'
        f'<figcaption><span class="cls">{esc(s.synset) or "?"}</span> '
        f'<span class="lbl">label {esc(s.label) or "?"}</span>'
        f'<span class="fn" title="{esc(s.filename)}">{esc_name(s.filename)}</span>'
        f'<span class="where" title="{esc(s.file)}">{esc(Path(s.file).name)}</span>'
        f'<span class="where" title="record {s.position:,} of the file">#{s.position:,} &middot; {dims}'
        f"{human_bytes(s.size)}</span>"
        "</figcaption></figure>"
    )


def _samples(page: Page) -> str:
    body = []
    for split in SPLITS:
        samples = [s for s in page.samples if s.split == split]
        if not samples:
            continue
        files = len({s.file for s in samples})
        body.append(
            f"<h3>{SPLIT_NAMES[split].capitalize()}: {len(samples)} records from {files} "
            f"file{'s' if files > 1 else ''}</h3>"
            f'<div class="grid">{"".join(_sample_cell(s) for s in samples)}</div>'
        )
    lead = (
        "Decoded from the written output, as the trainer reads it: records chosen evenly across files and "
        "positions (the same ones on every run), with the class and label stored in each record."
    )
    html = "".join(body) or '<p class="muted">No record could be read.</p>'
    return _section("samples", "Sample records", html, lead)


def _sizes(page: Page) -> str:
    rows = []
    for split in SPLITS:
        s = page.image_sizes[split].summary()
        if not s.get("count"):
            continue
        rows.append(
            [SPLIT_NAMES[split], f"{s['count']:,}", human_bytes(s["total"]), human_bytes(s["mean"])]
            + [human_bytes(s[k]) for k in ("min", "p1", "median", "p99", "max")]
        )
    image_table = _table(
        ["split", "images", "total", "mean", "min", "1%", "median", "99%", "max"], rows, "num"
    )
    image_chart = charts.histogram(
        page.image_hist, human_bytes, "image size (log scale); bar height: share of the split"
    )
    file_rows = []
    bars = []
    for split in SPLITS:
        files = page.files.get(split, [])
        if not files:
            continue
        sizes = sorted(size for _, size, _ in files)
        file_rows.append(
            [
                SPLIT_NAMES[split],
                f"{len(files):,}",
                f"{sum(r for _, _, r in files):,}",
                human_bytes(sum(sizes)),
                human_bytes(sizes[0]),
                human_bytes(sizes[len(sizes) // 2]),
                human_bytes(sizes[-1]),
            ]
        )
        bars.extend((split, name, size) for name, size, _ in files)
    file_table = _table(
        ["split", "files", "records", "total", "smallest", "median", "largest"], file_rows, "num"
    )
    if page.file_hists:
        file_chart = "".join(
            f'<figure><figcaption><span class="swatch {split}"></span>{SPLIT_NAMES[split]} files</figcaption>'
            + charts.histogram(hist, human_bytes, "file size; bar height: share of the files", unit="files")
            + "</figure>"
            for split, hist in page.file_hists.items()
        )
    else:
        file_chart = charts.file_bars(bars, human_bytes)
    legend = '<p class="legend"><span class="swatch train"></span>train <span class="swatch val"></span>validation</p>'
    body = (
        f'<h3>Images (source bytes, from the catalogs)</h3>{legend}<div class="chartbox">{image_chart}</div>'
        f'{image_table}<h3>Output files</h3><div class="chartbox">{file_chart}</div>{file_table}'
    )
    return _section("sizes", "Size distributions", body)


def _listed(title: str, items: list[Listed], empty: str) -> str:
    if not items:
        return f'<h3>{title}</h3><p class="good">{esc(empty)}</p>'
    cells = []
    for item in items[:MAX_TABLE_ROWS]:
        img = _img(item.thumb, item.name)
        attrs, cls = "", "thumb listed"
        if item.stored is not None:
            # Source and stored side by side: a wrong conversion (inverted CMYK, say) shows at a glance.
            cls += " both"
            attrs = (
                f' data-stored-file="{esc(item.stored_file)}" data-stored-position="{item.stored_position}"'
            )
            img = (
                f'<div class="pair"><div><span class="tag">source</span>{img}</div>'
                f'<div><span class="tag">stored</span>{_img(item.stored, f"{item.name} as stored")}</div></div>'
            )
        cells.append(
            f'<figure class="{cls}"{attrs}>{img}<figcaption><span class="cls">{esc(item.synset)}</span> '
            f'<span class="lbl">{esc(SPLIT_NAMES.get(item.split, item.split))}</span>'
            f'<span class="fn" title="{esc(item.name)}">{esc_name(item.name)}</span>'
            f'<span class="reason">{esc(item.reason)}</span></figcaption></figure>'
        )
    more = len(items) - MAX_TABLE_ROWS
    tail = f'<p class="muted">and {more:,} more (all in manifest.json).</p>' if more > 0 else ""
    return f'<h3>{title} ({len(items):,})</h3><div class="grid">{"".join(cells)}</div>{tail}'


def _listed_section(page: Page) -> str:
    body = _listed("Re-encoded", page.reencoded, "No image needed re-encoding.") + _listed(
        "Left out", page.skipped, "No image was left out."
    )
    lead = (
        "Previews from the source images; a re-encoded image is also shown as stored in the output (read "
        "back from its shard), a left-out one is not stored at all."
    )
    return _section("listed", "Re-encoded and left-out images", body, lead)


def _checks(page: Page) -> str:
    """What was checked while writing (checksums, decode check) and how to check a copy later."""
    m = page.manifest
    outputs = m.get("outputs", {})
    checks = m.get("checks", {})
    summed = sum(1 for o in outputs.values() if isinstance(o, dict) and o.get("crc32c"))
    decode_on = bool(checks.get("decode_check"))
    failures = int(checks.get("decode_failures", 0) or 0)
    if summed == len(outputs) and outputs:
        crc = f'<span class="good">recorded for all {len(outputs):,} files</span>, computed while writing'
    elif summed:
        crc = f'<span class="far">recorded for {summed:,} of {len(outputs):,} files</span>'
    else:
        crc = '<span class="far">not recorded</span> (written by a version without checksums)'
    if decode_on:
        decode = (
            '<span class="good">on</span>: every image was decoded with TensorFlow\'s '
            "<code>tf.io.decode_jpeg</code> before it was written; "
            + (
                f'<span class="far">{failures:,} failed</span> (listed under Left out, with the reason)'
                if failures
                else "none failed"
            )
        )
    else:
        decode = (
            '<span class="muted">off</span>: images were checked by their header (structure, size, '
            "completeness), not decoded; <code>verify --decode</code> decodes them"
        )
    rows = [
        ["<strong>CRC-32C per output file</strong>", crc],
        ["<strong>decode check</strong>", decode],
        [
            "<strong>check a copy</strong>",
            f"<code>python -m airflow_resnet_prep.verify {esc(page.data_dir)} [--decode]</code> (or the "
            "path of a copy): files, sizes, checksums, records, labels, per-class counts, index files",
        ],
    ]
    files = [
        [
            f"<code>{esc(name)}</code>",
            human_bytes(int(st.get("size", 0))),
            f"{int(st.get('records', 0)):,}",
            f"<code>{esc(st.get('crc32c', '-'))}</code>",
        ]
        for name, st in sorted(outputs.items())[:MAX_TABLE_ROWS]
        if isinstance(st, dict)
    ]
    more = len(outputs) - MAX_TABLE_ROWS
    tail = f'<p class="muted">and {more:,} more files (all in manifest.json).</p>' if more > 0 else ""
    body = (
        _table(["check", "result"], rows, "checks")
        + "<h3>Output files</h3>"
        + _table(["file", "size", "records", "CRC-32C"], files, "files")
        + tail
    )
    return _section("checks", "Checks", body)


TIME_KEYS = ("seconds", "total_s", "unit_seconds")
STEP_ORDER = ("fetch", "relabel", "plan", "convert", "finish", "publish")


def _seconds(stats: dict[str, Any]) -> tuple[str, float] | None:
    """The step's time: its key and value in seconds."""
    for key in TIME_KEYS:
        if isinstance(stats.get(key), (int, float)):
            return key, float(stats[key])
    return None


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.2f} s"
    minutes = seconds / 60
    return f"{minutes:,.1f} min" if minutes < 120 else f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _steps(page: Page) -> str:
    recorded = page.manifest.get("steps", {})
    # In the order they run (the manifest's keys are sorted by name), then any other step.
    order = [k for k in STEP_ORDER if k in recorded] + [k for k in recorded if k not in STEP_ORDER]
    steps = {k: recorded[k] for k in order if isinstance(recorded[k], dict)}
    times = {name: _seconds(stats) for name, stats in steps.items()}
    longest = max((t[1] for t in times.values() if t), default=0) or 1
    written = sum(int(o.get("size", 0)) for o in page.manifest.get("outputs", {}).values())
    rows = []
    for name, stats in steps.items():
        timed = times[name]
        rate = [f"{v:,} {esc(k.replace('_', ' '))}" for k, v in stats.items() if "per" in k and v is not None]
        if name == "convert" and timed and timed[1] > 0:
            rate.append(f"{human_bytes(written / timed[1])}/s written")
        shown = {timed[0]} if timed else set()
        other = [f"{esc(k)}={esc(v)}" for k, v in stats.items() if "per" not in k and k not in shown]
        time_cell, bar = "&ndash;", ""
        if timed:
            key, seconds = timed
            time_cell = duration(seconds)
            if key == "unit_seconds":
                # Summed over the mapped tasks' units: machine time, not the wall-clock time of the run.
                time_cell += '<br><span class="muted">sum over units</span>'
            bar = f'<div class="meter"><span style="width:{max(0.5, seconds / longest * 100):.1f}%"></span></div>'
        rows.append(
            [
                f"<strong>{esc(name)}</strong>",
                time_cell,
                bar,
                "<br>".join(rate) or "&ndash;",
                f'<span class="muted">{", ".join(other)}</span>',
            ]
        )
    body = (
        _table(["step", "time", "", "throughput", "details"], rows, "steps")
        if rows
        else '<p class="muted">No step timings recorded.</p>'
    )
    return _section("steps", "Steps", body)


def _run(page: Page) -> str:
    m = page.manifest
    sources = m.get("sources", {})
    src_rows = []
    for name, fp in sources.items():
        if not isinstance(fp, dict):
            src_rows.append([esc(name), "", f"<code>{esc(json.dumps(fp))}</code>", ""])
            continue
        size = fp.get("size")
        detail = {k: v for k, v in fp.items() if k not in ("source", "size", "kind")}
        if isinstance(detail.get("mtime_ns"), int):
            mtime = detail.pop("mtime_ns")
            detail = {"modified": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mtime / 1e9)), **detail}
        src_rows.append(
            [
                f"<strong>{esc(name)}</strong>",
                esc(fp.get("kind", "")),
                f"<code>{esc(fp.get('source', ''))}</code>",
                human_bytes(size) if isinstance(size, (int, float)) else "",
                "<br>".join(f'<span class="muted">{esc(k)}</span> {esc(v)}' for k, v in detail.items()),
            ]
        )
    conversion = m.get("conversion", {})
    body = (
        '<div class="cols"><div><h3>Output params</h3>'
        + _kv(m.get("params", {}))
        + "</div><div><h3>Versions</h3>"
        + _kv({k: v if v is not None else "not installed" for k, v in m.get("versions", {}).items()})
        + "<h3>Conversion</h3>"
        + _kv({k: v for k, v in conversion.items() if k != "splits"})
        + "</div></div><h3>Sources</h3>"
        + _table(["source", "kind", "location", "size", "fingerprint"], src_rows, "sources")
    )
    return _section("run", "Params, sources and versions", body)


def _problems(page: Page) -> str:
    if not page.problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in page.problems[:MAX_PROBLEMS])
    if len(page.problems) > MAX_PROBLEMS:
        items += f"<li>and {len(page.problems) - MAX_PROBLEMS:,} more</li>"
    return f'<div class="problems"><strong>Parts of this report could not be made:</strong><ul>{items}</ul></div>'


def _reused(page: Page) -> str:
    if not page.reused:
        return ""
    return (
        '<div class="reused"><strong>The latest run reused this output</strong> (nothing was converted '
        f"again): {esc(page.reused)}.</div>"
    )


def render(page: Page) -> str:
    """The whole document."""
    impl = esc(page.manifest.get("implementation", "?"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Dataset report &middot; {impl}</title><style>{CSS}</style></head><body>"
        + _header(page)
        + _nav()
        + "<main>"
        + _reused(page)
        + _problems(page)
        + _classes(page)
        + _samples(page)
        + _sizes(page)
        + _listed_section(page)
        + _checks(page)
        + _steps(page)
        + _run(page)
        + "</main><footer>Written by airflow-resnet-prep "
        + esc(page.manifest.get("versions", {}).get("airflow-resnet-prep", ""))
        + " from <code>manifest.json</code>, the catalogs and the output files. Self-contained: no network.</footer>"
        + "</body></html>\n"
    )


CSS = """
:root{--fg:#1d2433;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--accent:#3867d6;--train:#3867d6;
--val:#20a39e;--far:#e8412c;--ok:#12805c;--warn:#b54708}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
header.top{background:linear-gradient(135deg,#1e2a4a,#2f4a8a);color:#fff;padding:28px max(24px,calc(50% - 580px)) 24px}
.kicker{text-transform:uppercase;letter-spacing:.08em;font-size:12px;opacity:.75}
h1{margin:6px 0 4px;font-size:30px;font-weight:650;display:flex;align-items:center;gap:14px;flex-wrap:wrap}
.status{font-size:13px;font-weight:600;padding:3px 10px;border-radius:999px;background:#fff;letter-spacing:.02em}
.status.ok{color:var(--ok)}.status.warn{color:var(--warn)}
.sub{margin:0 0 18px;opacity:.85;font-size:14px}.sub code{color:#dfe6ff}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:10px}
.card{background:rgba(255,255,255,.1);border:1px solid rgba(255,255,255,.18);border-radius:10px;padding:10px 14px}
.card .value{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .label{font-size:12px;opacity:.8}
nav.toc{position:sticky;top:0;z-index:2;background:rgba(255,255,255,.95);border-bottom:1px solid var(--line);
padding:8px max(24px,calc(50% - 580px));display:flex;gap:18px;flex-wrap:wrap;font-size:14px}
nav.toc a{color:var(--accent);text-decoration:none}nav.toc a:hover{text-decoration:underline}
main{max-width:1160px;margin:0 auto;padding:8px 24px 24px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 22px;margin:18px 0}
h2{margin:0 0 6px;font-size:20px}h3{margin:20px 0 8px;font-size:15px;color:#344054}
.lead{margin:0 0 12px;color:var(--muted);font-size:14px}
figure{margin:10px 0}figcaption{font-size:13px;color:#344054;margin-bottom:4px}
svg.chart{width:100%;min-width:620px;height:auto;display:block;font-family:inherit}
figure,.chartbox{overflow-x:auto}
svg .grid{stroke:#eef0f3}svg .tickmark{stroke:#98a2b3}svg .tick{font-size:12.5px;fill:#667085}
svg .axis{font-size:13px;fill:#475467}svg .note{font-size:12.5px;fill:#344054}
svg .band{fill:#12805c;opacity:.08}svg .mean{stroke:#1d2433;stroke-dasharray:4 3;stroke-width:1}
svg .bar:hover{opacity:.75}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 6px 0 2px;vertical-align:0}
.swatch.train{background:var(--train)}.swatch.val{background:var(--val)}
.legend{font-size:13px;color:var(--muted);margin:0}
.far{color:var(--far);font-weight:600}.good{color:var(--ok)}.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-size:13.5px;margin:8px 0}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
table.num td{font-variant-numeric:tabular-nums}
table.kv th{width:38%;font-weight:500;color:#475467}
.scroll{max-height:340px;overflow:auto;border:1px solid var(--line);border-radius:8px}
.scroll table{margin:0}.scroll thead th{position:sticky;top:0;background:#fff}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:0 28px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:12px}
.thumb{margin:0;background:#fafbfc;border:1px solid var(--line);border-radius:8px;overflow:hidden}
.thumb img,.thumb .noimg{width:100%;aspect-ratio:1/1;object-fit:cover;display:block;background:#eef0f3}
.thumb .noimg{display:flex;align-items:center;justify-content:center;padding:10px;font-size:12px;color:var(--muted);
text-align:center;word-break:break-word}
.thumb figcaption{padding:6px 8px 8px;margin:0;display:flex;flex-wrap:wrap;gap:2px 6px;font-size:12px}
.thumb .cls{font-weight:600;font-family:ui-monospace,Menlo,Consolas,monospace}
.thumb .lbl{color:var(--accent)}
.thumb .fn,.thumb .where,.thumb .reason{flex-basis:100%;color:var(--muted)}
.thumb .fn{overflow-wrap:anywhere}
.thumb .where{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:11.5px}
.thumb .reason{color:var(--warn);white-space:normal}
.thumb.both{grid-column:span 2}.pair{display:grid;grid-template-columns:1fr 1fr;gap:2px}
.pair>div{position:relative}.pair .tag{position:absolute;left:6px;top:6px;background:rgba(0,0,0,.6);color:#fff;
font-size:11px;padding:1px 6px;border-radius:4px}
.meter{background:#eef0f3;border-radius:4px;height:10px;min-width:120px}
.meter span{display:block;height:100%;background:var(--accent);border-radius:4px}
.problems{background:#fff6ed;border:1px solid #f9dbaf;border-radius:10px;padding:12px 16px;margin:18px 0;color:#7a2e0e}
.reused{background:#eef4ff;border:1px solid #c7d7fe;border-radius:10px;padding:12px 16px;margin:18px 0;color:#1e3a8a}
footer{max-width:1160px;margin:0 auto;padding:8px 24px 32px;color:var(--muted);font-size:12.5px}
"""
