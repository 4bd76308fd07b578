/**
 * The inspector's page: one self-contained document (no external resources). Everything the app or
 * visitors control reaches the DOM through textContent only, never as markup.
 */
export const INSPECTOR_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ptth-proxy inspector</title>
<style>
:root { --bg: #f6f7f9; --card: #fff; --line: #e3e6eb; --text: #1d2330; --dim: #6b7385; --accent: #2f6fde;
  --ok: #1f8a4c; --redir: #8a6d1f; --bad: #c0392b; --sel: #eaf1fd;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  background: var(--bg); color: var(--text); }
header { display: flex; align-items: center; gap: 12px; padding: 10px 16px;
  background: #1d2330; color: #fff; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
header .target { color: #aeb6c6; font-family: var(--mono); font-size: 12px; overflow-wrap: anywhere; }
header .live { margin-left: auto; font-size: 12px; color: #aeb6c6; display: flex; align-items: center; gap: 6px; }
header .dot { width: 8px; height: 8px; border-radius: 50%; background: #999; }
header .dot.on { background: #3ecf7a; }
main { display: grid; grid-template-columns: minmax(320px, 42%) 1fr; gap: 12px; padding: 12px;
  height: calc(100vh - 48px); }
.list, .detail { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  overflow: auto; min-height: 0; }
.empty { padding: 24px; color: var(--dim); text-align: center; }
.row { display: grid; grid-template-columns: 58px 1fr auto; gap: 2px 10px; padding: 8px 12px;
  border-bottom: 1px solid var(--line);
  cursor: pointer; align-items: baseline; }
.row:hover { background: #f2f5fa; }
.row.sel { background: var(--sel); box-shadow: inset 3px 0 0 var(--accent); }
.method { font-weight: 600; font-family: var(--mono); font-size: 12px; }
.path { font-family: var(--mono); font-size: 13px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.status { font-family: var(--mono); font-weight: 600; text-align: right; }
.s2 { color: var(--ok); } .s3 { color: var(--redir); } .s4, .s5, .s0 { color: var(--bad); }
.meta { grid-column: 2 / 4; color: var(--dim); font-size: 12px; }
.detail { padding: 14px 16px; }
.detail h2 { font-size: 15px; margin: 0 0 4px; font-family: var(--mono); overflow-wrap: anywhere; }
.detail h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--dim); margin: 16px 0 6px; }
.summary { color: var(--dim); font-size: 13px; }
table.h { border-collapse: collapse; width: 100%; font-family: var(--mono); font-size: 12px; }
table.h td { padding: 3px 6px; border-top: 1px solid var(--line); vertical-align: top; overflow-wrap: anywhere; }
table.h td:first-child { color: var(--dim); white-space: nowrap; width: 1%; }
pre { margin: 0; padding: 8px 10px; background: #f3f4f7; border-radius: 6px; font: 12px/1.4 var(--mono);
  white-space: pre-wrap;
  overflow-wrap: anywhere; max-height: 320px; overflow: auto; }
.note { color: var(--dim); font-size: 12px; margin: 4px 0; }
button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; }
button:disabled { background: #c9cfda; border-color: #c9cfda; cursor: not-allowed; }
.actions { display: flex; gap: 10px; align-items: center; margin-top: 12px; flex-wrap: wrap; }
.replayed { margin-top: 14px; background: #f7faff; border: 1px solid #d6e4fb;
  border-radius: 8px; padding: 4px 12px 12px; }
.replayed h3:first-child { color: var(--accent); }
.replayed pre { background: #fff; }
.back { display: none; }
@media (max-width: 760px) {
  main { grid-template-columns: 1fr; height: auto; padding: 8px; }
  .list { max-height: none; }
  main.showing .list { display: none; }
  main:not(.showing) .detail { display: none; }
  .back { display: inline-block; background: #fff; color: var(--accent); margin-bottom: 10px; }
}
</style></head>
<body>
<header><h1>ptth-proxy inspector</h1><span class="target" id="target"></span>
<span class="live"><span class="dot" id="dot"></span><span id="state">connecting</span></span></header>
<main id="main">
<section class="list" id="list">
<div class="empty" id="empty">No requests yet. Visit your public URL and they appear here.</div></section>
<section class="detail" id="detail"><div class="empty">Select a request to see its headers and body.</div></section>
</main>
<script>
"use strict";
const list = document.getElementById('list');
const detail = document.getElementById('detail');
const main = document.getElementById('main');
const byId = new Map();
let selected = null;
const LIMIT = 100;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function bytes(n) {
  if (n < 1000) return n + ' B';
  if (n < 1e6) return (n / 1000).toFixed(1) + ' KB';
  return (n / 1e6).toFixed(1) + ' MB';
}
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }
function statusClass(s) { return 's' + String(s || 0).charAt(0); }
function decode(b64) {
  const bin = atob(b64 || '');
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function headerTable(flat) {
  const t = el('table', 'h');
  for (let i = 0; i + 1 < (flat || []).length; i += 2) {
    const tr = el('tr');
    tr.append(el('td', '', flat[i]), el('td', '', flat[i + 1]));
    t.append(tr);
  }
  if (!t.rows.length) return el('p', 'note', 'no headers');
  return t;
}
function bodyView(b64, total, truncated) {
  const wrap = el('div');
  const raw = decode(b64);
  if (!raw.length) { wrap.append(el('p', 'note', total ? 'body not kept' : 'no body')); return wrap; }
  let text = null;
  // A body cut at the KiB may end inside a character: tolerate that (stream: true), nothing else.
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(raw, { stream: !!truncated }); } catch (e) { text = null; }
  if (text !== null && /[\\u0000-\\u0008\\u000e-\\u001f]/.test(text)) text = null;
  if (text !== null) wrap.append(el('pre', 'body', text));
  else {
    wrap.append(el('p', 'note', 'binary: first ' + raw.length + ' bytes as hex'));
    let hex = '';
    for (let i = 0; i < raw.length; i++) hex += raw[i].toString(16).padStart(2, '0') + ((i + 1) % 16 ? ' ' : '\\n');
    wrap.append(el('pre', 'body', hex));
  }
  const of = total ? ' of ' + bytes(total) : '';
  if (truncated) wrap.append(el('p', 'note', 'truncated: only the first KiB' + of + ' is shown'));
  return wrap;
}
function render(x) {
  detail.textContent = '';
  const back = el('button', 'back', '\\u2190 All requests');
  back.onclick = () => { main.classList.remove('showing'); };
  detail.append(back);
  detail.append(el('h2', '', x.method + ' ' + x.url));
  detail.append(el('div', 'summary', (x.status ? x.status : 'no response') + (x.error ? ' (' + x.error + ')' : '') +
    ' \\u00b7 ' + clock(x.time) + ' \\u00b7 ' + Math.round(x.ms) + ' ms \\u00b7 in ' + bytes(x.bytesIn) +
    ', out ' + bytes(x.bytesOut) +
    (x.remote ? ' \\u00b7 from ' + x.remote : '')));
  const actions = el('div', 'actions');
  const btn = el('button', 'replay', 'Replay');
  btn.id = 'replay';
  const why = el('span', 'note');
  if (x.replay) { btn.disabled = true; why.textContent = 'Replay unavailable: ' + x.replay + '.'; }
  else why.textContent = 'Sends the request again straight to the local service.';
  actions.append(btn, why);
  detail.append(actions);
  const result = el('div', 'replayed');
  result.id = 'replayed';
  result.hidden = true;
  detail.append(result);
  btn.onclick = async () => {
    btn.disabled = true;
    result.hidden = false;
    result.textContent = '';
    result.append(el('p', 'note', 'replaying\\u2026'));
    try {
      const init = { method: 'POST', headers: { 'X-Ptth-Inspector': '1' } };
      const res = await fetch('/replay/' + encodeURIComponent(x.id), init);
      const r = await res.json();
      result.textContent = '';
      if (!res.ok) { result.append(el('p', 'note', 'Replay refused: ' + r.error)); return; }
      result.append(el('h3', '', 'Replayed response'));
      const s = el('div', 'summary');
      const code = el('span', 'status ' + statusClass(r.status), r.status || 'no response');
      code.id = 'replay-status';
      const why = r.error ? ' (' + r.error + ')' : '';
      s.append(code, document.createTextNode(why + ' \\u00b7 ' + r.ms + ' ms \\u00b7 ' + bytes(r.bodyBytes)));
      result.append(s, el('h3', '', 'Headers'), headerTable(r.headers));
      result.append(el('h3', '', 'Body'), bodyView(r.body, r.bodyBytes, r.truncated));
    } catch (e) {
      result.textContent = '';
      result.append(el('p', 'note', 'Replay failed: ' + e));
    } finally { btn.disabled = false; }
  };
  if (!x.request) { detail.append(el('p', 'note', 'The gateway sent no headers or bodies for this request.')); return; }
  detail.append(el('h3', '', 'Request headers'), headerTable(x.request.headers));
  detail.append(el('h3', '', 'Request body'), bodyView(x.request.body, x.request.bodyBytes, x.request.truncated));
  if (x.response) {
    detail.append(el('h3', '', 'Response headers'), headerTable(x.response.headers));
    detail.append(el('h3', '', 'Response body'), bodyView(x.response.body, x.bytesOut, x.response.truncated));
  } else detail.append(el('h3', '', 'Response'), el('p', 'note', 'no response'));
}
function select(x, row) {
  selected = x.id;
  for (const r of list.querySelectorAll('.row.sel')) r.classList.remove('sel');
  row.classList.add('sel');
  main.classList.add('showing');
  render(x);
}
function add(x) {
  document.getElementById('empty')?.remove();
  const row = el('div', 'row');
  row.dataset.id = x.id;
  row.append(el('span', 'method', x.method), el('span', 'path', x.url),
    el('span', 'status ' + statusClass(x.status), x.status || '\\u2014'),
    el('span', 'meta', clock(x.time) + ' \\u00b7 ' + Math.round(x.ms) + ' ms \\u00b7 ' + bytes(x.bytesOut) +
      (x.error ? ' \\u00b7 ' + x.error : '')));
  row.title = x.url;
  row.onclick = () => select(x, row);
  byId.set(x.id, row);
  list.prepend(row);
  while (byId.size > LIMIT) {
    const last = list.lastElementChild;
    if (!last) break;
    byId.delete(last.dataset.id);
    last.remove();
  }
}
const source = new EventSource('/events');
source.addEventListener('open', () => {
  document.getElementById('dot').classList.add('on');
  document.getElementById('state').textContent = 'live';
  for (const id of [...byId.keys()]) { byId.get(id).remove(); byId.delete(id); }
});
source.addEventListener('error', () => {
  document.getElementById('dot').classList.remove('on');
  document.getElementById('state').textContent = 'reconnecting';
});
source.addEventListener('target', (ev) => {
  document.getElementById('target').textContent = 'local service ' + JSON.parse(ev.data);
});
source.addEventListener('exchange', (ev) => add(JSON.parse(ev.data)));
</script>
</body></html>
`;
