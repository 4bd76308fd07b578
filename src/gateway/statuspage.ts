import { escapeHtml } from '../http/respond.js';

/**
 * The status page's HTML (the page at `/` on the gateway host; src/gateway/endpoints.ts decides who
 * sees what and serves the JSON form). It is complete without JavaScript; with it, a small inline
 * script fetches the JSON form every 2 s and redraws the count, the list and the uptime in place.
 * No external resources: styles and script are inline.
 */

export interface StatusChannel {
  readonly transport: string;
  readonly remote: string;
  readonly active: number;
  readonly served: number;
}

/** A node of a cluster holding channels of a name, and how many. */
export interface StatusHolder {
  readonly node: string;
  readonly channels: number;
}

export interface StatusRegistration {
  readonly name: string;
  readonly url: string;
  readonly requests: number;
  readonly waiting: number;
  /** ISO time the name is released if no channel comes back; null while live. */
  readonly expiresAt: string | null;
  /** This gateway's (this node's) channels of the name. */
  readonly channels: readonly StatusChannel[];
  /** On a node of a cluster: the nodes holding channels of the name, this one included. */
  readonly holders?: readonly StatusHolder[] | undefined;
  /**
   * On a node of a cluster whose store did not answer: the other nodes this one has a route to for
   * the name (cached), when it has no channel of its own.
   */
  readonly remotes?: number | undefined;
}

/** What a node of a cluster shows of the cluster. */
export interface StatusCluster {
  /** This node's id. */
  readonly node: string;
  /** False when the store did not answer: the page shows this node's view only. */
  readonly available: boolean;
  /** The live nodes (this one included); absent when the store did not answer. */
  readonly nodes?: readonly { readonly id: string; readonly url: string }[] | undefined;
  /** True when the cluster holds more registrations than the page lists (`limit` of them, in the store's scan order). */
  readonly truncated?: boolean | undefined;
  readonly limit?: number | undefined;
  /** Why the store did not answer. */
  readonly error?: string | undefined;
}

export interface StatusView {
  readonly version: string;
  /** Seconds. */
  readonly uptime: number;
  readonly count: number;
  /** Absent when this client may not see the list (serve --status-list). */
  readonly registrations: readonly StatusRegistration[] | undefined;
  /** An app's public URL with `NAME` for its name, as claims advertise it (publicUrlFor). */
  readonly appUrl: string;
  /** What `connect --gateway` takes: the gateway's origin as advertised (gatewayOrigin). */
  readonly gateway: string;
  readonly metricsLink: boolean;
  /**
   * The one browser origin every path-routed app shares (`serve --urls path` or `both`), shown as a
   * warning; undefined while apps each have a host of their own.
   */
  readonly sharedOrigin?: string | undefined;
  /** The live demo's section (src/gateway/browser.ts). */
  readonly demo: string;
  /** Set on a node of a cluster, for a client that may see the list. */
  readonly cluster?: StatusCluster | undefined;
}

/** `1 h 2 min`, `3 min 4 s`, `5 s`. */
function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function localChannelsHtml(r: StatusRegistration): string {
  return r.channels
    .map(
      (c) =>
        `<span class="chan"><b>${escapeHtml(c.transport)}</b> from <code>${escapeHtml(c.remote)}</code> ` +
        `<small>${c.active} active, ${c.served} served</small></span>`,
    )
    .join('');
}

/** `1 channel`, `2 channels`. */
function channelCount(n: number): string {
  return `${n} channel${n === 1 ? '' : 's'}`;
}

/**
 * On a cluster node, each node holding the name with its count; this node's own channels in detail
 * under its line (`self`: this node's id).
 */
function holdersHtml(r: StatusRegistration, holders: readonly StatusHolder[], self: string): string {
  let out = '';
  for (const h of holders) {
    const mine = h.node === self;
    out +=
      `<span class="holder">on <b>${escapeHtml(h.node)}</b>${mine ? ' (this node)' : ''} ` +
      `<small>${channelCount(h.channels)}</small></span>`;
    if (mine) out += localChannelsHtml(r);
  }
  return out;
}

function channelsHtml(r: StatusRegistration, self: string | undefined): string {
  if (self !== undefined && r.holders !== undefined && r.holders.length > 0) return holdersHtml(r, r.holders, self);
  if (r.channels.length === 0 && r.remotes !== undefined && r.remotes > 0)
    return `<span class="idle">none here: served by ${r.remotes === 1 ? 'another node' : `${r.remotes} other nodes`}</span>`;
  if (r.channels.length === 0) {
    const at = r.expiresAt;
    const until =
      at === null ? '' : ` <time datetime="${escapeHtml(at)}">(lease ends ${escapeHtml(at.slice(11, 19))} UTC)</time>`;
    return `<span class="idle">none: waiting for the app to reconnect${until}</span>`;
  }
  return localChannelsHtml(r);
}

function rowHtml(r: StatusRegistration, self: string | undefined): string {
  const url = escapeHtml(r.url);
  return (
    `<tr><td data-label="Name"><a href="${url}">${escapeHtml(r.name)}</a><br><small class="url">${url}</small></td>` +
    `<td data-label="Channels">${channelsHtml(r, self)}</td>` +
    `<td data-label="Requests" class="num">${r.requests}</td>` +
    `<td data-label="Waiting" class="num">${r.waiting}</td></tr>`
  );
}

const EMPTY_ROW = '<tr class="empty"><td colspan="4">No app is connected.</td></tr>';

const STYLE = `
:root{color-scheme:light dark;--fg:#1d2430;--muted:#5b6575;--line:#dde2ea;--card:#f6f8fb;--accent:#2458d6;--ok:#178a4c}
@media (prefers-color-scheme:dark){
:root{--fg:#e4e8ef;--muted:#9aa4b5;--line:#333b48;--card:#1b2029;--accent:#7aa5ff;--ok:#4cc584}
}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);max-width:64rem;margin:0 auto;
padding:1.5rem 1.25rem 3rem}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.25rem 1rem;border-bottom:1px solid var(--line);
padding-bottom:.75rem}
h1{font-size:1.6rem;margin:0}
h2{font-size:1.15rem;margin:2rem 0 .6rem;display:flex;align-items:center;gap:.6rem;flex-wrap:wrap}
.sub{color:var(--muted);margin:0}
a{color:var(--accent)}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--card);
border:1px solid var(--line);border-radius:4px;padding:0 .3rem;overflow-wrap:anywhere}
.cmd{display:block;padding:.5rem .7rem;margin:.35rem 0 0;white-space:pre-wrap}
var{font-style:normal;color:var(--accent);font-weight:600}
.live{font-size:.8rem;font-weight:normal;color:var(--muted);display:inline-flex;align-items:center;gap:.35rem}
.live::before{content:"";width:.55rem;height:.55rem;border-radius:50%;background:var(--muted)}
.live.on::before{background:var(--ok)}
table{border-collapse:collapse;width:100%}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
td,th{text-align:left;vertical-align:top;border-bottom:1px solid var(--line);padding:.5rem .6rem}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.url{color:var(--muted);overflow-wrap:anywhere;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.chan,.holder{display:block}
.holder~.chan{margin-left:1rem}
.chan small,.idle{color:var(--muted)}
.chan small{white-space:nowrap}
tr.empty td{color:var(--muted);font-style:italic}
.note{color:var(--muted);font-style:italic}
.warn{border:1px solid #d08a00;border-left-width:4px;border-radius:4px;padding:.5rem .75rem;background:var(--card)}
footer{margin-top:2.5rem;border-top:1px solid var(--line);padding-top:.75rem;color:var(--muted);font-size:.85rem}
input,button{font:inherit}
@media (max-width:40rem){
body{padding:1rem .85rem 2rem}
thead{display:none}
table,tbody{display:block;width:100%}
tr{display:grid;grid-template-columns:1fr 1fr;border:1px solid var(--line);border-radius:8px;margin:0 0 .75rem;
padding:.35rem .2rem;background:var(--card)}
td{display:block;border:0;padding:.25rem .6rem;min-width:0}
td:not(.num),tr.empty td{grid-column:1/-1}
td.num{text-align:left}
td[data-label]::before{content:attr(data-label);display:block;font-size:.72rem;text-transform:uppercase;
letter-spacing:.04em;color:var(--muted)}
td.num[data-label]::before{display:inline;margin-right:.5rem}
tr.empty{display:block;background:none}
}`;

/**
 * Redraws from the JSON form: the count, the uptime and (when the page has the list) the rows. Data
 * reaches the page through textContent and attributes only, never as markup.
 */
const SCRIPT = `
const $ = (id) => document.getElementById(id);
const el = (tag, props, ...kids) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...kids);
  return e;
};
const dur = (s) => s < 60 ? s + ' s'
  : s < 3600 ? Math.floor(s / 60) + ' min ' + (s % 60) + ' s'
  : s < 86400 ? Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min'
  : Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
function chans(r, self) {
  const local = r.channels.map((c) => el('span', { className: 'chan' }, el('b', { textContent: c.transport }),
    ' from ', el('code', { textContent: c.remote }), ' ',
    el('small', { textContent: c.active + ' active, ' + c.served + ' served' })));
  if (self !== undefined && r.holders && r.holders.length) {
    return r.holders.flatMap((h) => [el('span', { className: 'holder' }, 'on ', el('b', { textContent: h.node }),
      h.node === self ? ' (this node) ' : ' ',
      el('small', { textContent: h.channels + (h.channels === 1 ? ' channel' : ' channels') }))]
      .concat(h.node === self ? local : []));
  }
  if (r.channels.length === 0 && r.remotes > 0) {
    return [el('span', { className: 'idle', textContent: 'none here: served by '
      + (r.remotes === 1 ? 'another node' : r.remotes + ' other nodes') })];
  }
  return r.channels.length === 0
    ? [el('span', { className: 'idle', textContent: 'none: waiting for the app to reconnect'
        + (r.expiresAt ? ' (lease ends ' + r.expiresAt.slice(11, 19) + ' UTC)' : '') })]
    : local;
}
function cluster(c) {
  const nodes = $('nodes');
  if (nodes) {
    nodes.replaceChildren(...(c.nodes ? [' Live nodes (' + c.nodes.length + '): ', ...c.nodes.flatMap((n, i) =>
      [i ? ', ' : '', el('code', { textContent: n.id, title: n.url })]), '.'] : []));
  }
  const note = $('cluster-note');
  if (note) {
    note.hidden = c.available && !c.truncated;
    note.className = c.available ? 'note' : 'warn';
    note.textContent = c.available ? (c.truncated ? 'The cluster holds more than ' + c.limit
      + ' registrations: ' + c.limit + ' of them are listed.' : '')
      : 'The cluster list is unavailable: ' + c.error + ". This page shows this node's registrations only.";
  }
}
function row(r, self) {
  const td = (label, ...kids) => { const t = el('td', {}, ...kids); t.dataset.label = label; return t; };
  const num = (label, n) => { const t = td(label, String(n)); t.className = 'num'; return t; };
  const link = el('a', { href: r.url, textContent: r.name });
  return el('tr', {}, td('Name', link, el('br'), el('small', { className: 'url', textContent: r.url })),
    td('Channels', ...chans(r, self)), num('Requests', r.requests), num('Waiting', r.waiting));
}
let timer;
async function refresh() {
  const live = $('live');
  try {
    const res = await fetch('/', { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    const s = await res.json();
    $('count').textContent = s.count + (s.cluster && s.cluster.truncated ? '+' : '');
    $('uptime').textContent = dur(s.gateway.uptime);
    if (s.cluster) cluster(s.cluster);
    const self = s.cluster ? s.cluster.node : undefined;
    const rows = $('rows');
    if (rows && s.registrations) {
      rows.replaceChildren(...(s.registrations.length ? s.registrations.map((r) => row(r, self))
        : [el('tr', { className: 'empty' }, el('td', { colSpan: 4, textContent: 'No app is connected.' }))]));
    }
    live.className = 'live on';
    live.textContent = 'live, updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    live.className = 'live';
    live.textContent = 'not updating (' + e.message + '): retrying';
  }
  timer = setTimeout(refresh, 2000);
}
$('live').hidden = false;
timer = setTimeout(refresh, 2000);
`;

/**
 * What a cluster node adds above the list: its id, the live nodes, and a note when the store did not
 * answer (the list is this node's own then) or the cluster holds more names than the page lists.
 */
function clusterHtml(c: StatusCluster | undefined): string {
  if (c === undefined) return '';
  const nodes =
    c.nodes === undefined
      ? ''
      : ` Live nodes (${c.nodes.length}): ` +
        c.nodes.map((n) => `<code title="${escapeHtml(n.url)}">${escapeHtml(n.id)}</code>`).join(', ') +
        '.';
  let note = '<p id="cluster-note" hidden></p>';
  if (!c.available)
    note =
      `<p class="warn" id="cluster-note">The cluster list is unavailable: ${escapeHtml(c.error ?? 'unknown error')}. ` +
      'This page shows this node&#39;s registrations only.</p>';
  else if (c.truncated)
    note =
      `<p class="note" id="cluster-note">The cluster holds more than ${c.limit} registrations: ${c.limit} ` +
      'of them are listed.</p>';
  return (
    `<p id="cluster">This is node <code>${escapeHtml(c.node)}</code> of a cluster.<span id="nodes">${nodes}</span> ` +
    'Every name of the cluster is listed with the nodes holding its channels; channels in detail, requests and ' +
    'waiting visitors are this node&#39;s.</p>\n' +
    `${note}\n`
  );
}

export function renderStatusPage(v: StatusView): string {
  const list = v.registrations;
  const table =
    list === undefined
      ? '<p class="note">The list of names is not shown to visitors from other machines (serve --status-list).</p>'
      : `<table><thead><tr><th>Name</th><th>Channels</th><th class="num">Requests</th><th class="num">Waiting</th></tr>
</thead>
<tbody id="rows">
${list.length === 0 ? EMPTY_ROW : list.map((r) => rowHtml(r, v.cluster?.node)).join('\n')}
</tbody></table>`;
  const shared =
    v.sharedOrigin === undefined
      ? ''
      : `<p class="warn" id="shared-origin"><strong>Warning: apps share one origin.</strong> Apps are served at paths of ` +
        `<code>${escapeHtml(v.sharedOrigin)}</code> (serve --urls), so they all share that browser origin, with this page: ` +
        'any app can read the cookies and storage of every other app, and act in its name in a visitor&#39;s browser. ' +
        'Serve apps that do not trust each other at host-based URLs (--urls host).</p>\n';
  // NAME is where the app's name goes; the rest is the URL exactly as a claim's Link would give it.
  const appUrl = escapeHtml(v.appUrl).replace('NAME', '<var>NAME</var>');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>ptth-proxy</title>
<style>${STYLE}</style>
</head><body>
<header><h1>ptth-proxy</h1><p class="sub">reverse HTTP gateway &middot; ${escapeHtml(v.version)}</p></header>
<p>A program with only an HTTP client claims a name here and serves HTTP at <code id="app-url">${appUrl}</code>.</p>
${shared}<p>Expose a local web app:<code class="cmd">npx ptth-proxy connect 3000 --gateway ${escapeHtml(v.gateway)}</code></p>
<h2><span>Live registrations (<span id="count">${v.count}${v.cluster?.truncated ? '+' : ''}</span>)</span>
<span id="live" class="live" hidden>live</span></h2>
${clusterHtml(v.cluster)}${table}
<noscript><p class="note">Reload the page to see new registrations.</p></noscript>
${v.demo}
<footer>ptth-proxy ${escapeHtml(v.version)} &middot; up <span id="uptime">${duration(v.uptime)}</span> &middot;
<a href="/?format=json">JSON</a> (send Accept: application/json) &middot; <a href="/healthz">/healthz</a>
&middot; <a href="/readyz">/readyz</a>${v.metricsLink ? ' &middot; <a href="/metrics">/metrics</a>' : ''}</footer>
<script>(() => {${SCRIPT}})();</script>
</body></html>
`;
}
